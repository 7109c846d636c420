"""CDA R2 builders: the CI-SIS header ("Structuration minimale", FORMATS.md §4.2) and the N1 document (PDF in
`nonXMLBody`). The N3 CR-BIO body lives in `hub.transform.build.cda_bio`.

Documents are built from string templates with escaping (the fast path, see bench/transform.py), then parsed back
(our own output: trusted parser) and validated against the compiled CDA schema by `finish`, which raises
`TransformError` (with `.validation`) rather than return a document that does not validate. Inputs are model
objects already checked by the parsers; reads no settings (the hub OID, the time zone and the value-set labels
are arguments). Coded values carry their `displayName` from the ANS value sets (`terminology.valuesets`); unknown
addresses and telecoms are nullFlavor UNK, as the CI-SIS asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo

from lxml import etree

from hub.errors import TransformError
from hub.transform.model import LOINC, OID_RPPS, OID_STRUCT, DocumentMeta, Party, Patient
from hub.transform.terminology.dates import cda_ts
from hub.transform.terminology.valuesets import (CONFIDENTIALITY, FACILITY_TYPE, PRACTICE_SETTING, SPECIALTY,
                                                 ValueSets)
from hub.transform.validate.xmlsafe import CdaValidator

T_HL7FR, T_CISIS, T_XDS_SD = "2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1", "1.3.6.1.4.1.19376.1.2.20"
T_XDLAB, T_CRBIO = "1.3.6.1.4.1.19376.1.3.3", "1.2.250.1.213.1.1.1.55"
DOC_LABELS = {
    "11490-0": "Lettre de liaison à la sortie d'un établissement de soins",
    "11502-2": "CR d'examens biologiques",
    "18748-4": "CR d'imagerie médicale",
    "34112-3": "Note d'hospitalisation",
}
SEX_LABELS = {"M": "Masculin", "F": "Féminin", "U": "Inconnu"}
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SPECIAL = re.compile(r'[&<>"\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')
_TRUSTED = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True, collect_ids=False)


def x(text: str) -> str:
    """Escape text for element content and attribute values (double-quoted); drop XML-invalid characters."""
    if not text:
        return ""
    text = str(text)
    if _SPECIAL.search(text) is None:      # the common case: nothing to do
        return text
    text = _CTRL.sub("", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def ts_el(tag: str, value: str, tz: tzinfo, extra: str = "") -> str:
    return f'<{tag}{extra} value="{x(cda_ts(value, tz))}"/>' if value else f'<{tag}{extra} nullFlavor="UNK"/>'


def name_xml(family: str, given: str = "") -> str:
    """A person's name; the family name is required by the CI-SIS templates: unknown, it is nullFlavor UNK."""
    giv = f"<given>{x(given)}</given>" if given else ""
    fam = f"<family>{x(family)}</family>" if family else '<family nullFlavor="UNK"/>'
    return f"<name>{giv}{fam}</name>"


def addr_xml(lines: tuple[str, ...] | list[str]) -> str:
    if not lines:
        return '<addr nullFlavor="UNK"/>'
    return "<addr>" + "".join(f"<streetAddressLine>{x(a)}</streetAddressLine>" for a in lines) + "</addr>"


def telecom_xml(uri: str) -> str:
    return f'<telecom value="{x(uri)}"/>' if uri else '<telecom nullFlavor="UNK"/>'


def coded(tag: str, code: str, system: str, vs: ValueSets, system_name: str = "") -> str:
    if not code:
        return ""
    label = vs.label(system, code)
    return (f'<{tag} code="{x(code)}"' + (f' displayName="{x(label)}"' if label else "")
            + f' codeSystem="{system}"' + (f' codeSystemName="{system_name}"' if system_name else "") + "/>")


def person_id(p: Party) -> str:
    return f'<id root="{OID_RPPS}" extension="8{x(p.rpps)}"/>' if p.rpps else '<id nullFlavor="UNK"/>'


def org(p: Party, tag: str = "representedOrganization", extra: str = "", *, contact: bool = True) -> str:
    """An organisation: FINESS id (1+FINESS), name, telecom and address (CI-SIS order), then `extra`."""
    ident = f'<id root="{OID_STRUCT}" extension="1{x(p.org_finess)}"/>' if p.org_finess else '<id nullFlavor="UNK"/>'
    name = f"<name>{x(p.org_name)}</name>" if p.org_name else ""
    reach = telecom_xml(p.telecom) + addr_xml(p.addr) if contact else ""
    return f"<{tag}>{ident}{name}{reach}{extra}</{tag}>"


def entity(p: Party, vs: ValueSets, *, specialty: str = "", org_extra: str = "", person: bool = True) -> str:
    """assignedAuthor / assignedEntity content: id, code, addr, telecom, assignedPerson, representedOrganization."""
    code = coded("code", specialty or p.specialty, SPECIALTY, vs)
    who = f"<assignedPerson>{name_xml(p.family, p.given)}</assignedPerson>" if person else ""
    return person_id(p) + code + addr_xml(p.addr) + telecom_xml(p.telecom) + who + org(p, extra=org_extra)


@dataclass(frozen=True)
class Header:
    doc_id_root: str
    doc_id_ext: str
    code: str
    label: str
    title: str
    effective_time: str
    templates: tuple[tuple[str, str], ...]
    confidentiality: str = "N"
    local_id_root: str = ""
    set_id_root: str = ""
    set_id_ext: str = ""
    version: int = 1
    author_time: str = ""             # default: effective_time
    legal_time: str = ""              # default: author_time


def patient_xml(p: Patient, local_root: str) -> str:
    """recordTarget with the INS traits of the "structuration minimale": birth name (BR), every birth given name
    and the first one (BR), used name and first name (CL), sex, birth date and birth place (COG code in `county`;
    nullFlavor UNK when an INS is given without it)."""
    ids = []
    if p.ins and p.ins_oid:
        ids.append(f'<id root="{x(p.ins_oid)}" extension="{x(p.ins)}"/>')
    root = p.local_id_oid or local_root
    if p.local_id and root:
        ids.append(f'<id root="{x(root)}" extension="{x(p.local_id)}"/>')
    telecom = (f'<telecom value="mailto:{x(p.ins)}@patient.mssante.fr"/>' if p.ins and p.ins_oid
               else '<telecom nullFlavor="UNK"/>')
    names = [f'<family qualifier="BR">{x(p.family)}</family>'] if p.family else ['<family nullFlavor="UNK"/>']
    if p.given:
        names.append(f"<given>{x(p.given)}</given>")
    if p.first_given:
        names.append(f'<given qualifier="BR">{x(p.first_given)}</given>')
    if p.used_family and p.used_family != p.family:
        names.append(f'<family qualifier="CL">{x(p.used_family)}</family>')
    if p.used_given:
        names.append(f'<given qualifier="CL">{x(p.used_given)}</given>')
    sex = (f'<administrativeGenderCode code="{"UN" if p.sex == "U" else p.sex}" displayName="{SEX_LABELS[p.sex]}" '
           f'codeSystem="2.16.840.1.113883.5.1"/>' if p.sex in SEX_LABELS
           else '<administrativeGenderCode nullFlavor="UNK"/>')
    birth = f'<birthTime value="{x(p.birth_date)}"/>' if p.birth_date else '<birthTime nullFlavor="UNK"/>'
    place = ""
    if p.birth_place_cog or p.birth_place_city or (p.ins and p.ins_oid):
        county = f"<county>{x(p.birth_place_cog)}</county>" if p.birth_place_cog else '<county nullFlavor="UNK"/>'
        city = f"<city>{x(p.birth_place_city)}</city>" if p.birth_place_city else ""
        place = f"<birthplace><place><addr>{county}{city}</addr></place></birthplace>"
    return ("<recordTarget><patientRole>" + ("".join(ids) or '<id nullFlavor="UNK"/>') + addr_xml(p.address)
            + telecom + '<patient classCode="PSN"><name>' + "".join(names) + "</name>" + sex + birth + place
            + "</patient></patientRole></recordTarget>")


def header_xml(h: Header, patient: Patient, author: Party, tz: tzinfo, vs: ValueSets, *, specialty: str = "",
               practice_setting: str = "ETABLISSEMENT") -> str:
    """ClinicalDocument start tag through legalAuthenticator (the caller adds participants, documentationOf...)."""
    templates = "".join(f'<templateId root="{r}"' + (f' extension="{e}"' if e else "") + "/>" for r, e in h.templates)
    author_time = h.author_time or h.effective_time
    person = bool(author.family or author.given or author.rpps)
    setting = coded("standardIndustryClassCode", practice_setting, PRACTICE_SETTING, vs)
    set_root, set_ext = (h.set_id_root, h.set_id_ext) if h.set_id_root else (f"{h.doc_id_root}.1", h.doc_id_ext)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:lab="urn:oid:1.3.6.1.4.1.19376.1.3.2" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<realmCode code="FR"/><typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>' + templates
        + f'<id root="{x(h.doc_id_root)}"' + (f' extension="{x(h.doc_id_ext)}"' if h.doc_id_ext else "") + "/>"
        f'<code code="{x(h.code)}" codeSystem="{LOINC}" codeSystemName="LOINC" displayName="{x(h.label)}"/>'
        f"<title>{x(h.title)}</title>" + ts_el("effectiveTime", h.effective_time, tz)
        + coded("confidentialityCode", h.confidentiality, CONFIDENTIALITY, vs)
        + '<languageCode code="fr-FR"/>'
        f'<setId root="{x(set_root)}"' + (f' extension="{x(set_ext)}"' if set_ext else "") + "/>"
        f'<versionNumber value="{int(h.version)}"/>'
        + patient_xml(patient, h.local_id_root)
        + "<author>" + ts_el("time", author_time, tz) + "<assignedAuthor>"
        + entity(author, vs, specialty=specialty, person=person) + "</assignedAuthor></author>"
        "<custodian><assignedCustodian>" + org(author, "representedCustodianOrganization")
        + "</assignedCustodian></custodian>"
        "<legalAuthenticator>" + ts_el("time", h.legal_time or author_time, tz) + '<signatureCode code="S"/>'
        "<assignedEntity>" + entity(author, vs, specialty=specialty, org_extra=setting, person=True)
        + "</assignedEntity></legalAuthenticator>"
    )


def participant_gp(gp: Party | None, vs: ValueSets) -> str:
    """The médecin traitant (participant INF, function PCP), when known by RPPS."""
    if gp is None or not gp.rpps:
        return ""
    return ('<participant typeCode="INF"><functionCode code="PCP" displayName="Médecin traitant" '
            'codeSystem="2.16.840.1.113883.5.88"/><time nullFlavor="NA"/><associatedEntity classCode="PROV">'
            + person_id(gp) + coded("code", gp.specialty or "G15_10/SM26", SPECIALTY, vs) + addr_xml(gp.addr)
            + telecom_xml(gp.telecom) + f"<associatedPerson>{name_xml(gp.family, gp.given)}</associatedPerson>"
            "</associatedEntity></participant>")


def encounter_xml(start: str, facility_code: str, tz: tzinfo, vs: ValueSets, responsible: str = "",
                  encounter_id: tuple[str, str] = ("", "")) -> str:
    low = ts_el("low", start, tz)
    ident = (f'<id root="{x(encounter_id[0])}"' + (f' extension="{x(encounter_id[1])}"' if encounter_id[1] else "")
             + "/>") if encounter_id[0] else ""
    return ("<componentOf><encompassingEncounter>" + ident + "<effectiveTime>" + low + "</effectiveTime>"
            + responsible + "<location><healthCareFacility>"
            + coded("code", facility_code, FACILITY_TYPE, vs)
            + "</healthCareFacility></location></encompassingEncounter></componentOf>")


def n1_frame(meta: DocumentMeta, pdf_head: bytes, *, doc_id_root: str, doc_id_ext: str, local_id_root: str,
             tz: tzinfo, vs: ValueSets) -> tuple[bytes, bytes]:
    """CDA R2 N1 (generic unstructured document, XDS-SD template) around a PDF: the UTF-8 bytes before and after the
    PDF's base64 text in nonXMLBody. pdf_head: the PDF's first bytes (its signature is checked). The sender's own
    document id and set id are used when the metadata gives them."""
    if not pdf_head.startswith(b"%PDF-"):
        raise TransformError("the attachment is not a PDF (no %PDF- signature)")
    label = meta.doc_label or DOC_LABELS.get(meta.doc_code, meta.title or meta.doc_code)
    root, ext = (meta.doc_id_root, meta.doc_id_ext) if meta.doc_id_root else (doc_id_root, doc_id_ext)
    h = Header(root, ext, meta.doc_code, label, meta.title or label, meta.effective_time,
               ((T_HL7FR, ""), (T_CISIS, ""), (T_XDS_SD, "")), meta.confidentiality, local_id_root,
               meta.set_id_root, meta.set_id_ext, meta.version, meta.author_time)
    author = meta.author
    start = meta.service_start or meta.effective_time
    setting = coded("standardIndustryClassCode", meta.practice_setting, PRACTICE_SETTING, vs)
    service = ("<documentationOf><serviceEvent><effectiveTime>" + ts_el("low", start, tz)
               + (ts_el("high", meta.service_stop, tz) if meta.service_stop else "") + "</effectiveTime>"
               '<performer typeCode="PRF"><assignedEntity>' + person_id(author) + org(author, extra=setting)
               + "</assignedEntity></performer></serviceEvent></documentationOf>")
    head = (header_xml(h, meta.patient, author, tz, vs, specialty=meta.author_specialty,
                       practice_setting=meta.practice_setting) + participant_gp(meta.gp, vs) + service
            + encounter_xml(start, meta.facility_code, tz, vs,
                            encounter_id=(meta.encounter_id_root, meta.encounter_id_ext))
            + '<component><nonXMLBody><text mediaType="application/pdf" representation="B64">')
    return head.encode("utf-8"), b"</text></nonXMLBody></component></ClinicalDocument>"


def finish(xml: str | bytes, validator: CdaValidator) -> tuple[bytes, str, etree._Element]:
    """Parse our own output (text, or UTF-8 bytes), validate it; return (bytes, validation, root) or raise
    TransformError."""
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    try:
        root = etree.fromstring(data, _TRUSTED)
    except etree.XMLSyntaxError as exc:   # a builder bug, never the input's fault
        err = TransformError(f"built CDA is not well-formed: {exc}")
        err.validation = f"invalid: {exc}"
        raise err from None
    validation = validator.validate(root)
    if validation.startswith("invalid"):
        err = TransformError(f"built CDA does not validate against the CDA schema: {validation}")
        err.validation = validation
        raise err
    return data, validation, root
