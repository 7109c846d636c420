"""Read the header of a CDA R2 document (ours or a sender's) into `CdaInfo`: what XDM metadata and MSSanté headers
need (FORMATS.md §4.2, §5.2, MSSANTE.md §3.1).

Input: an already safely parsed root (`hub.transform.validate.xmlsafe.SafeXml.parse`). A root that is not a CDA
ClinicalDocument raises ParseError. Reads no settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from hub.errors import ParseError
from hub.transform.model import OID_RPPS, OID_STRUCT, Party, Patient, INS_OIDS

NS = "{urn:hl7-org:v3}"
_PATHS: dict[str, etree.ETXPath] = {}      # "h:a/h:b" -> its compiled XPath: 3x faster than find() per look-up


def _xpath(path: str) -> etree.ETXPath:
    compiled = _PATHS.get(path)
    if compiled is None:
        if len(_PATHS) >= 256:               # paths are the few constants below: a bound all the same
            _PATHS.clear()
        compiled = _PATHS[path] = etree.ETXPath(path.replace("h:", "{urn:hl7-org:v3}"))
    return compiled


def _find(el: etree._Element, path: str) -> etree._Element | None:
    """`el.find(path, {"h": HL7 v3})`: the first element the path selects, or None."""
    found = _xpath(path)(el)
    return found[0] if found else None


def _findall(el: etree._Element, path: str) -> list[etree._Element]:
    return _xpath(path)(el)
_SEX = {"UN": "U"}      # CDA's UN (unknown) is HL7 v2's U (XDM PID-8)
FORMAT_N1 = "urn:ihe:iti:xds-sd:pdf:2008"
FORMAT_CODES = {"1.2.250.1.213.1.1.1.55": "urn:ihe:lab:xd-lab:2008", "1.3.6.1.4.1.19376.1.3.3": "urn:ihe:lab:xd-lab:2008",
                "1.2.250.1.213.1.1.1.29": "urn:asip:ci-sis:ldl-ses:2017"}
FORMAT_SYSTEMS = {"urn:ihe:lab:xd-lab:2008": "1.3.6.1.4.1.19376.1.2.3", FORMAT_N1: "1.3.6.1.4.1.19376.1.2.3",
                  "urn:asip:ci-sis:ldl-ses:2017": "1.2.250.1.213.1.1.4.2.282"}


@dataclass(frozen=True)
class CdaInfo:
    id_root: str
    id_ext: str
    code: str
    code_label: str
    title: str
    effective_time: str
    templates: tuple[str, ...]
    confidentiality: str
    patient: Patient
    author: Party
    author_specialty: tuple[str, str, str]      # code, displayName, codeSystem
    legal: Party
    service_start: str
    service_stop: str
    facility_code: str
    practice_setting: str
    level: int                                  # 1 (nonXMLBody) or 3 (structuredBody)
    replaces: str                               # relatedDocument RPLC parent id, if any

    @property
    def unique_id(self) -> str:
        return f"{self.id_root}^{self.id_ext}" if self.id_ext else self.id_root

    @property
    def format_code(self) -> tuple[str, str]:
        if self.level == 1:
            return FORMAT_N1, FORMAT_SYSTEMS[FORMAT_N1]
        for t in self.templates:
            if t in FORMAT_CODES:
                return FORMAT_CODES[t], FORMAT_SYSTEMS[FORMAT_CODES[t]]
        return "urn:ihe:iti:xds-sd:text:2008", "1.3.6.1.4.1.19376.1.2.3"


def _a(el: etree._Element | None, attr: str) -> str:
    return (el.get(attr) or "").strip() if el is not None else ""


def _t(el: etree._Element | None, path: str) -> str:
    found = _find(el, path) if el is not None else None
    return " ".join((found.text or "").split()) if found is not None else ""


def _party(entity: etree._Element | None, person: str, organisation: str) -> Party:
    if entity is None:
        return Party()
    rpps = family = given = finess = org_name = ""
    for ident in _findall(entity, "h:id"):
        if ident.get("root") == OID_RPPS and (ident.get("extension") or "").startswith("8"):
            rpps = ident.get("extension")[1:]
    name = _find(entity, f"{person}/h:name")
    if name is not None:
        family = _t(name, "h:family")
        given = _t(name, "h:given")
    org = _find(entity, organisation)
    if org is not None:
        for ident in _findall(org, "h:id"):
            if ident.get("root") == OID_STRUCT and (ident.get("extension") or "").startswith("1"):
                finess = ident.get("extension")[1:]
        org_name = _t(org, "h:name")
    return Party(rpps=rpps, family=family, given=given, org_finess=finess, org_name=org_name)


def read_cda(root: etree._Element) -> CdaInfo:
    if root.tag != f"{NS}ClinicalDocument":
        raise ParseError(f"not a CDA document: root element is {root.tag!r}", where="line 1")
    ident = _find(root, "h:id")
    code = _find(root, "h:code")
    if ident is None or code is None or not code.get("code"):
        raise ParseError("CDA without id or code", where="ClinicalDocument")
    role = _find(root, "h:recordTarget/h:patientRole")
    ins = ins_oid = local = ""
    for pid in (_findall(role, "h:id") if role is not None else []):
        if pid.get("root") in INS_OIDS and not ins:
            ins, ins_oid = pid.get("extension") or "", pid.get("root")
        elif not local:
            local = pid.get("extension") or ""
    pat = _find(role, "h:patient") if role is not None else None
    family = given_all = given_first = used = ""
    name = _find(pat, "h:name") if pat is not None else None
    if name is not None:
        for fam in _findall(name, "h:family"):
            q = fam.get("qualifier") or ""
            if q in ("", "BR") and not family:
                family = " ".join((fam.text or "").split())
            elif q in ("CL", "SP"):
                used = " ".join((fam.text or "").split())
        for giv in _findall(name, "h:given"):
            text = " ".join((giv.text or "").split())
            if giv.get("qualifier") == "BR":
                given_first = text
            elif not given_all and not giv.get("qualifier"):
                given_all = text
    given = given_all or given_first
    if given_first and not given.startswith(given_first):
        given = f"{given_first} {given}".strip()
    sex = _a(_find(pat, "h:administrativeGenderCode") if pat is not None else None, "code")
    patient = Patient(local_id=local, ins=ins, ins_oid=ins_oid, family=family, given=given,
                      used_family=used or family, birth_date=_a(_find(pat, "h:birthTime") if pat is not None
                                                                 else None, "value")[:8],
                      sex=_SEX.get(sex, sex))
    assigned = _find(root, "h:author/h:assignedAuthor")
    specialty = _find(assigned, "h:code") if assigned is not None else None
    svc = _find(root, "h:documentationOf/h:serviceEvent")
    setting = _find(root, "h:documentationOf/h:serviceEvent/h:performer/h:assignedEntity/h:representedOrganization/"
                        "h:standardIndustryClassCode")
    if setting is None:
        setting = _find(root, "h:legalAuthenticator/h:assignedEntity/h:representedOrganization/"
                            "h:standardIndustryClassCode")
    rplc = _find(root, "h:relatedDocument[@typeCode='RPLC']/h:parentDocument/h:id")
    return CdaInfo(
        id_root=_a(ident, "root"), id_ext=_a(ident, "extension"), code=code.get("code"),
        code_label=_a(code, "displayName"), title=_t(root, "h:title"),
        effective_time=_a(_find(root, "h:effectiveTime"), "value"),
        templates=tuple(t.get("root") or "" for t in _findall(root, "h:templateId")),
        confidentiality=_a(_find(root, "h:confidentialityCode"), "code") or "N", patient=patient,
        author=_party(assigned, "h:assignedPerson", "h:representedOrganization"),
        author_specialty=(_a(specialty, "code"), _a(specialty, "displayName"), _a(specialty, "codeSystem")),
        legal=_party(_find(root, "h:legalAuthenticator/h:assignedEntity"), "h:assignedPerson",
                     "h:representedOrganization"),
        service_start=_a(_find(svc, "h:effectiveTime/h:low") if svc is not None else None, "value"),
        service_stop=_a(_find(svc, "h:effectiveTime/h:high") if svc is not None else None, "value"),
        facility_code=_a(_find(root, "h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/"
                                     "h:code"), "code"),
        practice_setting=_a(setting, "code"),
        level=1 if _find(root, "h:component/h:nonXMLBody") is not None else 3,
        replaces=(_a(rplc, "root") + ("^" + _a(rplc, "extension") if _a(rplc, "extension") else ""))
        if rplc is not None else "")
