"""Local lab code -> LOINC mapping table; applies the unit decision of `hub.transform.terminology.units`.

The table is a CSV file (setting `transform.loinc_map`, path passed in): `local_code,loinc_code,loinc_label[,ucum_unit]`,
UTF-8, `#` comments and a header line starting with `local_code` allowed. A malformed file is a ConfigError naming
file:line. The map is read once by the registry factory; `apply` is pure: unmapped codes are kept with their local
coding system and listed in the returned warnings, never dropped. A LOINC the sender gave (HL7 OBX-3, HPRIM
alternate code) is kept as given.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, replace
from types import MappingProxyType

from hub.errors import ConfigError
from hub.transform.model import Battery, LabReport, Result
from hub.transform.terminology.units import to_ucum

_LOINC = re.compile(r"^\d{1,7}-\d$")
_UCUM_SAFE = re.compile(r"^[!-~]+$")   # printable ASCII, no space


def _in_capitals(unit: str) -> bool:
    """A unit written in capitals that only its lower-case spelling makes known (`MMOL/L`, `MG/L`): the sender
    writes its units in capitals, so its `G/L` may be grams as well as giga per litre."""
    return unit == unit.upper() and unit != unit.lower() and to_ucum(unit) is None and bool(to_ucum(unit.lower()))


@dataclass(frozen=True)
class LoincEntry:
    loinc: str
    label: str
    ucum: str = ""


class LoincMap:
    """Immutable mapping local code -> LoincEntry."""

    def __init__(self, entries: dict[str, LoincEntry] | None = None, source: str = ""):
        self._entries = MappingProxyType(dict(entries or {}))
        self.source = source

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, local_code: str) -> LoincEntry | None:
        return self._entries.get(local_code.strip())

    @classmethod
    def from_csv_text(cls, text: str, source: str = "<csv>") -> "LoincMap":
        entries: dict[str, LoincEntry] = {}
        for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if number == 1 and row[0].strip().lower() == "local_code":
                continue
            if len(row) not in (3, 4):
                raise ConfigError(f"{source}:{number}: expected local_code,loinc_code,loinc_label[,ucum_unit]")
            local, loinc, label = (x.strip() for x in row[:3])
            if not local or not _LOINC.match(loinc):
                raise ConfigError(f"{source}:{number}: invalid local code or LOINC code {loinc!r}")
            ucum = row[3].strip() if len(row) == 4 else ""
            if ucum and not _UCUM_SAFE.match(ucum):
                raise ConfigError(f"{source}:{number}: UCUM unit {ucum!r} has spaces or non-ASCII characters")
            if local in entries:
                raise ConfigError(f"{source}:{number}: local code {local!r} mapped twice")
            entries[local] = LoincEntry(loinc, label, ucum)
        return cls(entries, source)

    @classmethod
    def from_file(cls, path: str) -> "LoincMap":
        if not path:
            return cls()
        try:
            with open(path, encoding="utf-8-sig") as fh:      # Excel writes "CSV UTF-8" with a BOM
                return cls.from_csv_text(fh.read(), path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"transform.loinc_map: cannot read {path}: {exc}") from None

    def apply(self, report: LabReport) -> tuple[LabReport, list[str]]:
        """Fill LOINC code/label (when the sender gave none) and decide every result's UCUM unit; return warnings
        for what stays local or goes as text. The laboratory's own unit decides (`units.to_ucum`); the map's UCUM
        column is used only for a spelling the unit table does not know, or when the laboratory gave no unit."""
        out, warnings = [], []
        batteries = tuple(self._battery(b) for b in report.batteries)
        capitals = any(_in_capitals(r.unit) for r in report.results)
        for res in report.results:
            entry = self.get(res.local_code) if res.local_code else None
            if entry is not None and not res.loinc:
                res = replace(res, loinc=entry.loinc, loinc_label=entry.label)
            elif not res.loinc:
                warnings.append(f"unmapped local code {res.local_code!r} kept with the laboratory's code system")
            res = self._unit(res, entry, warnings, capitals)
            out.append(res)
        return replace(report, results=tuple(out), batteries=batteries), warnings

    def _battery(self, battery: Battery) -> Battery:
        entry = None if battery.loinc else self.get(battery.local_code)
        return replace(battery, loinc=entry.loinc, loinc_label=entry.label) if entry else battery

    @staticmethod
    def _unit(res: Result, entry: LoincEntry | None, warnings: list[str], capitals: bool = False) -> Result:
        mapped = entry.ucum if entry is not None else ""
        ucum = to_ucum(res.unit)
        other = to_ucum(res.unit.lower()) if capitals and ucum and res.unit == res.unit.upper() else None
        if other and other != ucum:      # `G/L` where MG/L, MMOL/L are written so: giga or grams per litre?
            if mapped in (ucum, other):
                ucum = mapped
            else:
                warnings.append(f"unit {res.unit!r} of {res.local_code or res.loinc!r} is ambiguous in a file that "
                                f"writes its units in capitals ({ucum} or {other}): result sent as text with the "
                                "unit as written")
                ucum = ""
        elif ucum is None:
            ucum = mapped or None
        elif not ucum and not res.unit:
            ucum = mapped
        elif mapped and ucum != mapped:
            warnings.append(f"{res.local_code or res.loinc!r}: the laboratory's unit is UCUM {ucum!r}, the LOINC map says "
                            f"{mapped!r}: the laboratory's unit is kept")
        if ucum is None:
            if res.value_type in ("NM", "SN"):
                warnings.append(f"unit {res.unit!r} of {res.local_code or res.loinc!r} is not in the unit table: result sent as "
                                "text with the unit as written")
            ucum = ""
        ucum2 = to_ucum(res.unit2) if res.unit2 else ""
        if ucum2 is None:
            warnings.append(f"second unit {res.unit2!r} of {res.local_code or res.loinc!r} is not in the unit table: sent as text")
            ucum2 = ""
        return replace(res, ucum=ucum, ucum2=ucum2)
