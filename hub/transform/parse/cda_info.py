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
_N = {"h": "urn:hl7-org:v3"}
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
    found = el.find(path, _N) if el is not None else None
    return " ".join((found.text or "").split()) if found is not None else ""


def _party(entity: etree._Element | None, person: str, organisation: str) -> Party:
    if entity is None:
        return Party()
    rpps = family = given = finess = org_name = ""
    for ident in entity.findall("h:id", _N):
        if ident.get("root") == OID_RPPS and (ident.get("extension") or "").startswith("8"):
            rpps = ident.get("extension")[1:]
    name = entity.find(f"{person}/h:name", _N)
    if name is not None:
        family = _t(name, "h:family")
        given = _t(name, "h:given")
    org = entity.find(organisation, _N)
    if org is not None:
        for ident in org.findall("h:id", _N):
            if ident.get("root") == OID_STRUCT and (ident.get("extension") or "").startswith("1"):
                finess = ident.get("extension")[1:]
        org_name = _t(org, "h:name")
    return Party(rpps=rpps, family=family, given=given, org_finess=finess, org_name=org_name)


def read_cda(root: etree._Element) -> CdaInfo:
    if root.tag != f"{NS}ClinicalDocument":
        raise ParseError(f"not a CDA document: root element is {root.tag!r}", where="line 1")
    ident = root.find("h:id", _N)
    code = root.find("h:code", _N)
    if ident is None or code is None or not code.get("code"):
        raise ParseError("CDA without id or code", where="ClinicalDocument")
    role = root.find("h:recordTarget/h:patientRole", _N)
    ins = ins_oid = local = ""
    for pid in (role.findall("h:id", _N) if role is not None else []):
        if pid.get("root") in INS_OIDS and not ins:
            ins, ins_oid = pid.get("extension") or "", pid.get("root")
        elif not local:
            local = pid.get("extension") or ""
    pat = role.find("h:patient", _N) if role is not None else None
    family = given_all = given_first = used = ""
    name = pat.find("h:name", _N) if pat is not None else None
    if name is not None:
        for fam in name.findall("h:family", _N):
            q = fam.get("qualifier") or ""
            if q in ("", "BR") and not family:
                family = " ".join((fam.text or "").split())
            elif q in ("CL", "SP"):
                used = " ".join((fam.text or "").split())
        for giv in name.findall("h:given", _N):
            text = " ".join((giv.text or "").split())
            if giv.get("qualifier") == "BR":
                given_first = text
            elif not given_all and not giv.get("qualifier"):
                given_all = text
    given = given_all or given_first
    if given_first and not given.startswith(given_first):
        given = f"{given_first} {given}".strip()
    sex = _a(pat.find("h:administrativeGenderCode", _N) if pat is not None else None, "code")
    patient = Patient(local_id=local, ins=ins, ins_oid=ins_oid, family=family, given=given,
                      used_family=used or family, birth_date=_a(pat.find("h:birthTime", _N) if pat is not None
                                                                 else None, "value")[:8],
                      sex=_SEX.get(sex, sex))
    assigned = root.find("h:author/h:assignedAuthor", _N)
    specialty = assigned.find("h:code", _N) if assigned is not None else None
    svc = root.find("h:documentationOf/h:serviceEvent", _N)
    setting = root.find("h:documentationOf/h:serviceEvent/h:performer/h:assignedEntity/h:representedOrganization/"
                        "h:standardIndustryClassCode", _N)
    if setting is None:
        setting = root.find("h:legalAuthenticator/h:assignedEntity/h:representedOrganization/"
                            "h:standardIndustryClassCode", _N)
    rplc = root.find("h:relatedDocument[@typeCode='RPLC']/h:parentDocument/h:id", _N)
    return CdaInfo(
        id_root=_a(ident, "root"), id_ext=_a(ident, "extension"), code=code.get("code"),
        code_label=_a(code, "displayName"), title=_t(root, "h:title"),
        effective_time=_a(root.find("h:effectiveTime", _N), "value"),
        templates=tuple(t.get("root") or "" for t in root.findall("h:templateId", _N)),
        confidentiality=_a(root.find("h:confidentialityCode", _N), "code") or "N", patient=patient,
        author=_party(assigned, "h:assignedPerson", "h:representedOrganization"),
        author_specialty=(_a(specialty, "code"), _a(specialty, "displayName"), _a(specialty, "codeSystem")),
        legal=_party(root.find("h:legalAuthenticator/h:assignedEntity", _N), "h:assignedPerson",
                     "h:representedOrganization"),
        service_start=_a(svc.find("h:effectiveTime/h:low", _N) if svc is not None else None, "value"),
        service_stop=_a(svc.find("h:effectiveTime/h:high", _N) if svc is not None else None, "value"),
        facility_code=_a(root.find("h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/h:code",
                                   _N), "code"),
        practice_setting=_a(setting, "code"),
        level=1 if root.find("h:component/h:nonXMLBody", _N) is not None else 3,
        replaces=(_a(rplc, "root") + ("^" + _a(rplc, "extension") if _a(rplc, "extension") else ""))
        if rplc is not None else "")
