"""CDA R2 builders: the CI-SIS header ("Structuration minimale", FORMATS.md §4.2) and the N1 document (PDF in
`nonXMLBody`). The N3 CR-BIO body lives in `hub.transform.build.cda_bio`.

Documents are built from string templates with escaping (the fast path, see bench/transform.py), then parsed back
(our own output: trusted parser) and validated against the compiled CDA schema by `finish`, which raises
`TransformError` (with `.validation`) rather than return a document that does not validate. Inputs are model
objects already checked by the parsers; reads no settings (the hub OID and the time zone are arguments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo

from lxml import etree

from hub.errors import TransformError
from hub.transform.terminology.dates import cda_ts
from hub.transform.model import LOINC, OID_RPPS, OID_STRUCT, DocumentMeta, Party, Patient
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


def ts_el(tag: str, value: str, tz: tzinfo) -> str:
    return f'<{tag} value="{x(cda_ts(value, tz))}"/>' if value else f'<{tag} nullFlavor="UNK"/>'


def _name(family: str, given: str) -> str:
    parts = ([f"<given>{x(given)}</given>"] if given else []) + ([f"<family>{x(family)}</family>"] if family else [])
    return "<name>" + "".join(parts) + "</name>" if parts else '<name nullFlavor="UNK"/>'


def person_id(p: Party) -> str:
    return f'<id root="{OID_RPPS}" extension="8{x(p.rpps)}"/>' if p.rpps else '<id nullFlavor="UNK"/>'


def org(p: Party, tag: str = "representedOrganization", extra: str = "") -> str:
    ident = f'<id root="{OID_STRUCT}" extension="1{x(p.org_finess)}"/>' if p.org_finess else '<id nullFlavor="UNK"/>'
    name = f"<name>{x(p.org_name)}</name>" if p.org_name else ""
    return f"<{tag}>{ident}{name}{extra}</{tag}>"


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


def patient_xml(p: Patient, local_root: str) -> str:
    ids = []
    if p.ins and p.ins_oid:
        ids.append(f'<id root="{x(p.ins_oid)}" extension="{x(p.ins)}"/>')
    if p.local_id and local_root:
        ids.append(f'<id root="{x(local_root)}" extension="{x(p.local_id)}"/>')
    addr = '<addr nullFlavor="UNK"/>'
    if p.address:
        addr = "<addr>" + "".join(f"<streetAddressLine>{x(a)}</streetAddressLine>" for a in p.address) + "</addr>"
    telecom = (f'<telecom value="mailto:{x(p.ins)}@patient.mssante.fr"/>' if p.ins and p.ins_oid
               else '<telecom nullFlavor="UNK"/>')
    names = ([f'<family qualifier="BR">{x(p.family)}</family>'] if p.family else [])
    if p.given:
        names.append(f"<given>{x(p.given)}</given>")
        names.append(f'<given qualifier="BR">{x(p.first_given)}</given>')
    if p.used_family and p.used_family != p.family:
        names.append(f'<family qualifier="CL">{x(p.used_family)}</family>')
    sex = (f'<administrativeGenderCode code="{p.sex}" displayName="{SEX_LABELS[p.sex]}" '
           f'codeSystem="2.16.840.1.113883.5.1"/>' if p.sex in SEX_LABELS
           else '<administrativeGenderCode nullFlavor="UNK"/>')
    birth = f'<birthTime value="{x(p.birth_date)}"/>' if p.birth_date else '<birthTime nullFlavor="UNK"/>'
    return ("<recordTarget><patientRole>" + ("".join(ids) or '<id nullFlavor="UNK"/>') + addr + telecom
            + '<patient classCode="PSN"><name>' + "".join(names) + "</name>" + sex + birth
            + "</patient></patientRole></recordTarget>")


def header_xml(h: Header, patient: Patient, author: Party, tz: tzinfo, *, specialty: str = "",
               practice_setting: str = "ETABLISSEMENT") -> str:
    """ClinicalDocument start tag through legalAuthenticator (the caller adds participants, documentationOf...)."""
    templates = "".join(f'<templateId root="{r}"' + (f' extension="{e}"' if e else "") + "/>" for r, e in h.templates)
    when = ts_el("time", h.effective_time, tz)
    code = f'<code code="{x(specialty)}" codeSystem="1.2.250.1.213.1.1.4.5"/>' if specialty else ""
    author_person = (f"<assignedPerson>{_name(author.family, author.given)}</assignedPerson>"
                     if author.family or author.given or author.rpps else "")
    setting = (f'<standardIndustryClassCode code="{x(practice_setting)}" codeSystem="1.2.250.1.213.1.1.4.9"/>'
               if practice_setting else "")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:lab="urn:oid:1.3.6.1.4.1.19376.1.3.2" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<realmCode code="FR"/><typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>' + templates
        + f'<id root="{x(h.doc_id_root)}" extension="{x(h.doc_id_ext)}"/>'
        f'<code code="{x(h.code)}" codeSystem="{LOINC}" codeSystemName="LOINC" displayName="{x(h.label)}"/>'
        f"<title>{x(h.title)}</title>" + ts_el("effectiveTime", h.effective_time, tz)
        + f'<confidentialityCode code="{x(h.confidentiality)}" codeSystem="2.16.840.1.113883.5.25"/>'
        '<languageCode code="fr-FR"/>'
        f'<setId root="{x(h.doc_id_root)}.1" extension="{x(h.doc_id_ext)}"/><versionNumber value="1"/>'
        + patient_xml(patient, h.local_id_root)
        + "<author>" + when + "<assignedAuthor>" + person_id(author) + code + author_person + org(author)
        + "</assignedAuthor></author>"
        "<custodian><assignedCustodian>" + org(author, "representedCustodianOrganization")
        + "</assignedCustodian></custodian>"
        "<legalAuthenticator>" + when + '<signatureCode code="S"/><assignedEntity>' + person_id(author) + code
        + author_person + org(author, extra=setting) + "</assignedEntity></legalAuthenticator>"
    )


def encounter_xml(start: str, facility_code: str, tz: tzinfo, responsible: str = "") -> str:
    low = ts_el("low", start, tz)
    return ("<componentOf><encompassingEncounter><effectiveTime>" + low + "</effectiveTime>" + responsible
            + f'<location><healthCareFacility><code code="{x(facility_code)}" codeSystem="1.2.250.1.71.4.2.4"/>'
            "</healthCareFacility></location></encompassingEncounter></componentOf>")


def n1_frame(meta: DocumentMeta, pdf_head: bytes, *, doc_id_root: str, doc_id_ext: str, local_id_root: str,
             tz: tzinfo) -> tuple[bytes, bytes]:
    """CDA R2 N1 (generic unstructured document, XDS-SD template) around a PDF: the UTF-8 bytes before and after the
    PDF's base64 text in nonXMLBody. pdf_head: the PDF's first bytes (its signature is checked)."""
    if not pdf_head.startswith(b"%PDF-"):
        raise TransformError("the attachment is not a PDF (no %PDF- signature)")
    label = meta.doc_label or DOC_LABELS.get(meta.doc_code, meta.title or meta.doc_code)
    h = Header(doc_id_root, doc_id_ext, meta.doc_code, label, meta.title or label, meta.effective_time,
               ((T_HL7FR, ""), (T_CISIS, ""), (T_XDS_SD, "")), meta.confidentiality, local_id_root)
    author = meta.author
    start = meta.service_start or meta.effective_time
    setting = (f'<standardIndustryClassCode code="{x(meta.practice_setting)}" codeSystem="1.2.250.1.213.1.1.4.9"/>'
               if meta.practice_setting else "")
    service = ("<documentationOf><serviceEvent><effectiveTime>" + ts_el("low", start, tz)
               + (ts_el("high", meta.service_stop, tz) if meta.service_stop else "") + "</effectiveTime>"
               '<performer typeCode="PRF"><assignedEntity>' + person_id(author) + org(author, extra=setting)
               + "</assignedEntity></performer></serviceEvent></documentationOf>")
    head = (header_xml(h, meta.patient, author, tz, specialty=meta.author_specialty,
                       practice_setting=meta.practice_setting) + service
            + encounter_xml(start, meta.facility_code, tz)
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
