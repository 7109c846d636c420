"""Value-set labels: the `displayName` of the coded header values the hub writes (confidentiality, author specialty,
practice setting, healthcare facility type...), read at start-up from the ANS value-set files.

The files are the ANS's, never copied into the hub: setting `transform.value_sets` names folders (or files) of them,
in either ANS form, SVS (`jeuxDeValeurs/JDV_*.xml`, `<svs:Concept code= codeSystem= displayName=>`) or ART-DECOR
(`profils/structurationMinimale/include/voc-*.xml`, `<concept .../>`). When the setting is empty and
`transform.schematron_dir` is set, the value sets next to the schematrons are used (`../jeuxDeValeurs` and
`profils/structurationMinimale/include`). Without any, a few labels derived from those value sets for the hub's own
default codes are used (`_DERIVED`), and a code outside them is written without a label (the schematron check then
says so).

`ValueSets.label(system, code)` -> displayName or ''. `known(system, code)` tells a metadata check whether a code a
sender gave exists (only when the files are loaded). A file that cannot be read is a ConfigError naming it.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from lxml import etree

from hub.errors import ConfigError

CONFIDENTIALITY = "2.16.840.1.113883.5.25"
SPECIALTY = "1.2.250.1.213.1.1.4.5"             # TRE_G15 / R38 professions and specialties
PRACTICE_SETTING = "1.2.250.1.213.1.1.4.9"      # TRE_A01 cadre d'exercice
FACILITY_TYPE = "1.2.250.1.71.4.2.4"            # TRE_R02 secteur d'activité
ENCOUNTER_TYPE = "2.16.840.1.113883.5.4"

# derived from the ANS value sets (JDV_J01, J02, J04, confidentiality) for the codes the hub writes by default
_DERIVED = {
    (CONFIDENTIALITY, "N"): "Normal", (CONFIDENTIALITY, "R"): "Restreint", (CONFIDENTIALITY, "V"): "Très restreint",
    (SPECIALTY, "G15_10/SM03"): "Médecin - Biologie médicale (SM)",
    (SPECIALTY, "G15_10/SM26"): "Médecin - Qualifié en Médecine Générale (SM)", (SPECIALTY, "G15_10"): "Médecin",
    (SPECIALTY, "G15_21/SM03"): "Pharmacien - Biologie médicale (SM)",
    (PRACTICE_SETTING, "AMBULATOIRE"): "Ambulatoire", (PRACTICE_SETTING, "ETABLISSEMENT"): "Etablissement de santé",
    (FACILITY_TYPE, "SA01"): "Etablissement public de santé",
    (FACILITY_TYPE, "SA25"): "Laboratoire de biologie médicale",
    (FACILITY_TYPE, "SA29"): "Laboratoire d'analyses et de biologie médicale",
    (ENCOUNTER_TYPE, "AMB"): "Ambulatoire (hors établissement)",
    (ENCOUNTER_TYPE, "IMP"): "Hospitalisation (établissement, y compris HAD)",
}
_SVS = "{urn:ihe:iti:svs:2008}Concept"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class ValueSets:
    def __init__(self, labels: dict[tuple[str, str], str] | None = None, sources: tuple[str, ...] = ()):
        self.loaded = labels is not None
        self._labels = MappingProxyType({**_DERIVED, **(labels or {})})
        self.sources = sources

    def label(self, system: str, code: str) -> str:
        return self._labels.get((system, code), "")

    def known(self, system: str, code: str) -> bool:
        """Whether a code exists in the loaded value sets (always True when none are loaded: nothing to check)."""
        return not self.loaded or (system, code) in self._labels

    @classmethod
    def from_paths(cls, paths: list[str] | tuple[str, ...]) -> "ValueSets":
        if not paths:
            return cls()
        labels: dict[tuple[str, str], str] = {}
        files: list[Path] = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                files.extend(sorted(p for p in path.glob("*.xml")))
            elif path.is_file():
                files.append(path)
            else:
                raise ConfigError(f"transform.value_sets: {path} is neither a file nor a folder")
        for file in files:
            try:
                root = etree.parse(str(file), _PARSER).getroot()
            except (OSError, etree.LxmlError) as exc:
                raise ConfigError(f"transform.value_sets: cannot read {file}: {exc}") from None
            for el in root.iter(_SVS, "concept", "{urn:hl7-org:v3}concept"):
                code, system, label = el.get("code"), el.get("codeSystem"), el.get("displayName")
                if code and system and label:
                    labels.setdefault((system, code), label)
        return cls(labels, tuple(str(p) for p in paths))


def default_paths(schematron_dir: str) -> list[str]:
    """The value-set folders of the ANS rules tree, beside its `schematrons` folder."""
    if not schematron_dir:
        return []
    base = Path(schematron_dir)
    found = [base.parent / "jeuxDeValeurs", base / "profils" / "structurationMinimale" / "include"]
    return [str(p) for p in found if p.is_dir()]
