"""Where the unit is decided: lab unit spellings (HPRIM Santé, HPRIM Net, HL7 OBX-6 text) -> UCUM.

A closed table, never a guess: `to_ucum(unit)` returns the UCUM code for a spelling the table knows, else None, and
the caller then sends the result as text with the unit as the laboratory wrote it, with a warning. Case matters
where it changes the meaning: `G/l` (giga per litre, a cell count) is `10*9/L`, `g/l` (grams per litre) is `g/L`;
only the litre's `l`/`L` and the `UI`/`ui` of international units are read in either case.

Before the look-up a spelling is normalised: spaces removed, micro sign and Greek mu read as `u`, `²`/`³` as 2/3,
decimal comma as point, `10^9` / `10E9` / `x10*9` as `10*9`. The table is documented in docs/transform.md
(section "Units"); a laboratory whose unit is missing gets it added here (with a test), or mapped per analyte in the
LOINC map's fourth column. Pure; reads no settings.
"""

from __future__ import annotations

import re

UCUM_SYSTEM = "2.16.840.1.113883.6.8"

# UCUM code -> the spellings French lab software writes (litre written `L`: `l` is accepted too; `UI`: `ui` too).
# Every UCUM code is also accepted as written.
_TABLE: dict[str, tuple[str, ...]] = {
    # amounts of substance per volume
    "mol/L": ("mol/L",), "mmol/L": ("mmol/L", "mmol/litre"), "umol/L": ("umol/L",), "nmol/L": ("nmol/L",),
    "pmol/L": ("pmol/L",), "mmol/d": ("mmol/24h", "mmol/j", "mmol/jour"), "umol/d": ("umol/24h", "umol/j"),
    "mmol/mol": ("mmol/mol",), "mmol/kg": ("mmol/kg",), "mosm/kg": ("mosm/kg", "mosmol/kg", "mOsm/kg"),
    "mosm/L": ("mosm/L", "mOsm/L", "mosmol/L"), "meq/L": ("meq/L", "mEq/L", "mEq/l"),
    # mass per volume
    "g/L": ("g/L",), "g/dL": ("g/dL", "g/100mL"), "mg/L": ("mg/L",), "mg/dL": ("mg/dL",), "ug/L": ("ug/L", "mcg/L"),
    "ng/L": ("ng/L",), "ng/mL": ("ng/mL",), "pg/mL": ("pg/mL",), "ug/mL": ("ug/mL",), "mg/mL": ("mg/mL",),
    "ug/dL": ("ug/dL",), "g/d": ("g/24h", "g/j", "g/jour"), "mg/d": ("mg/24h", "mg/j", "mg/jour"),
    "ug/d": ("ug/24h",), "mg/mmol": ("mg/mmol",), "g/mmol": ("g/mmol",), "mg/g": ("mg/g",),
    # counts per volume: G and T are giga and tera, never grams
    "10*9/L": ("G/L", "Giga/L", "giga/L", "GIGA/L", "10*9/L"), "10*12/L": ("T/L", "Tera/L", "tera/L", "TERA/L",
                                                                          "10*12/L"),
    "10*6/L": ("10*6/L",), "10*3/uL": ("10*3/uL", "10*3/mm3"), "10*6/uL": ("10*6/uL", "10*6/mm3"),
    "/mm3": ("/mm3", "/mm 3"), "/uL": ("/uL",), "/L": ("/L",), "/mL": ("/mL",),
    "{copies}/mL": ("copies/mL", "cp/mL"),
    # enzymes and international units
    "U/L": ("U/L",), "U/mL": ("U/mL",), "[IU]/L": ("UI/L", "IU/L"), "[IU]/mL": ("UI/mL", "IU/mL"),
    "m[IU]/L": ("mUI/L", "mIU/L"), "m[IU]/mL": ("mUI/mL", "mIU/mL"), "u[IU]/mL": ("uUI/mL", "uIU/mL"),
    "k[IU]/L": ("kUI/L", "kIU/L"), "mU/L": ("mU/L",), "ukat/L": ("ukat/L",), "nkat/L": ("nkat/L",),
    # cells, blood count indices, rates, ratios
    "%": ("%", "pourcent"), "fL": ("fL", "um3"), "pg": ("pg",), "mm/h": ("mm/h", "mm/1h", "mm/heure"),
    "mL/min": ("mL/min",), "mL/min/{1.73_m2}": ("mL/min/1.73m2", "mL/min/1.73m*2", "mL/mn/1.73m2",
                                                "mL/min/1.73", "mL/min/{1.73_m2}"),
    # times, pressure, temperature, masses, lengths, volumes
    "s": ("s", "sec", "seconde", "secondes"), "min": ("min", "mn"), "h": ("h", "heure", "heures"),
    "d": ("j", "jour", "jours"), "mm[Hg]": ("mmHg", "mm Hg"), "Cel": ("°C",), "kg": ("kg",), "g": ("g",),
    "mg": ("mg",), "ug": ("ug",), "cm": ("cm",), "m": ("m",), "mL": ("mL",), "L": ("L", "litre", "litres"),
    "kg/m2": ("kg/m2",), "m2": ("m2",), "1": ("1",),
}

_MICRO = str.maketrans({"µ": "u", "μ": "u", "²": "2", "³": "3", ",": ".", "×": "x"})
_POWER = re.compile(r"^x?10(?:\^|E|e|\*|\.)?(\d{1,2})(?=/)")
_UCUM_CODES = frozenset(_TABLE)


def _norm(unit: str) -> str:
    u = "".join(unit.split()).translate(_MICRO)
    return _POWER.sub(r"10*\1", u)


def _variants(spelling: str) -> set[str]:
    """The spelling with the litre (L) and international unit (UI) in either case."""
    out = {spelling}
    for a, b in (("L", "l"), ("UI", "ui")):
        out |= {v.replace(a, b) for v in out} | {v.replace(b, a) for v in out if a == "UI"}
    return out


def _build() -> dict[str, str]:
    table: dict[str, str] = {}
    for code, spellings in _TABLE.items():
        for spelling in (code, *spellings):
            for v in _variants(_norm(spelling)):
                if table.setdefault(v, code) != code:       # a spelling maps to one code only
                    raise AssertionError(f"unit spelling {v!r} maps to {table[v]!r} and {code!r}")
    return table


_LOOKUP = _build()


def to_ucum(unit: str) -> str | None:
    """The UCUM code for a lab unit spelling the table knows; '' for no unit; None when it does not know it."""
    if not unit or not unit.strip():
        return ""
    return _LOOKUP.get(_norm(unit))


def is_ucum(code: str) -> bool:
    """A UCUM code the hub knows (a sender's OBX-6 declared UCUM is checked against the same table)."""
    return code in _UCUM_CODES or code in _LOOKUP and _LOOKUP[code] == code


def table() -> list[tuple[str, tuple[str, ...]]]:
    """(UCUM code, spellings) in table order: for the documentation."""
    return list(_TABLE.items())
