"""Local lab code -> LOINC mapping table, and local unit -> UCUM normalisation.

The table is a CSV file (setting `transform.loinc_map`, path passed in): `local_code,loinc_code,loinc_label[,ucum_unit]`,
UTF-8, `#` comments and a header line starting with `local_code` allowed. A malformed file is a ConfigError naming
file:line. The map is read once by the registry factory; `apply` is pure: unmapped codes are kept with their local
coding system and listed in the returned warnings, never dropped.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, replace
from types import MappingProxyType

from hub.errors import ConfigError
from hub.transform.model import LabReport

_LOINC = re.compile(r"^\d{1,7}-\d$")
_UCUM_SAFE = re.compile(r"^[!-~]+$")   # printable ASCII, no space

# common French lab spellings -> UCUM
_UNITS = {
    "mmol/l": "mmol/L", "µmol/l": "umol/L", "umol/l": "umol/L", "μmol/l": "umol/L", "nmol/l": "nmol/L",
    "pmol/l": "pmol/L", "mol/l": "mol/L", "g/l": "g/L", "mg/l": "mg/L", "µg/l": "ug/L", "ug/l": "ug/L",
    "ng/l": "ng/L", "ng/ml": "ng/mL", "pg/ml": "pg/mL", "mg/dl": "mg/dL", "g/dl": "g/dL", "ui/l": "[IU]/L",
    "ui/ml": "[IU]/mL", "mui/l": "m[IU]/L", "µui/ml": "u[IU]/mL", "mui/ml": "m[IU]/mL", "u/l": "U/L", "%": "%",
    "fl": "fL", "pg": "pg", "g/100ml": "g/dL", "giga/l": "10*9/L", "g/l (giga)": "10*9/L", "tera/l": "10*12/L",
    "t/l": "10*12/L", "/mm3": "/mm3", "mm/h": "mm/h", "sec": "s", "s": "s", "ml/min": "mL/min",
    "ml/min/1,73m2": "mL/min/{1.73_m2}", "ml/min/1.73m2": "mL/min/{1.73_m2}", "meq/l": "meq/L", "mosm/kg": "mosm/kg",
}


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
            with open(path, encoding="utf-8") as fh:
                return cls.from_csv_text(fh.read(), path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"transform.loinc_map: cannot read {path}: {exc}") from None

    def apply(self, report: LabReport) -> tuple[LabReport, list[str]]:
        """Fill LOINC code/label and UCUM unit on every result; return warnings for what stays local."""
        out, warnings = [], []
        for res in report.results:
            entry = None if res.loinc else self.get(res.local_code)
            if entry is not None:
                res = replace(res, loinc=entry.loinc, loinc_label=entry.label, code_system="LN",
                              ucum=entry.ucum or res.ucum)
            elif not res.loinc:
                warnings.append(f"unmapped local code {res.local_code!r} ({res.label}) kept with system "
                                f"{res.code_system or 'L'}")
            if res.unit and not res.ucum:
                ucum = to_ucum(res.unit)
                if ucum:
                    res = replace(res, ucum=ucum)
                elif res.value_type == "NM":
                    warnings.append(f"unit {res.unit!r} of {res.local_code!r} has no UCUM form: value sent as text")
            out.append(res)
        return report.with_results(tuple(out)), warnings


def to_ucum(unit: str) -> str:
    """Best-effort UCUM form of a lab unit, '' when unknown."""
    u = unit.strip()
    if not u:
        return ""
    known = _UNITS.get(u.lower().replace(" ", ""))
    if known:
        return known
    return u if re.fullmatch(r"[A-Za-z0-9/.\[\]*{}%_-]+", u) and not re.search(r"ui|UI", u) else ""

