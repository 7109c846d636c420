"""HL7 v2 MDM^T02 carrying a PDF document (TXA + OBX ED with the PDF base64): an input of the PDF-letter chain.

`read_mdm(msg)` -> (PDF bytes, metadata layer in the flat keys of `hub.transform.parse.metadata`):
PID (INS, IPP with its OID, birth and used names, birth place: `read_patient`), TXA-2 document type (LOINC),
TXA-4 / TXA-6 activity / origination time, TXA-5 (or TXA-9, TXA-22) author as XCN with RPPS, TXA-12 unique
document number (EI `id^^root^ISO` -> document id), TXA-18 confidentiality, PV1-19 visit number, PV1-44 / PV1-45
admission / discharge, OBX-5 `^application^pdf^Base64^<data>`. A malformed field is a ParseError naming the segment
and field. Reads no settings.
"""

from __future__ import annotations

import re

from hub.errors import ParseError
from hub.transform.parse.hl7v2 import Er7, pdf_documents, pdf_of_ed, read_patient
from hub.transform.terminology.dates import norm_ts

_LOINC = re.compile(r"^\d{1,7}-\d$")
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_UNFINISHED = {"DI": "dictated", "IN": "incomplete", "IP": "in progress"}


def read_mdm(msg: Er7) -> tuple[bytes, dict[str, str]]:
    txa = msg.first("TXA")
    if txa is None:
        raise ParseError("MDM^T02 without TXA", where="TXA")
    status = txa.get(17).strip().upper()
    if status in _UNFINISHED:       # HL7 table 0271: a draft is never sent as the letter
        raise ParseError(f"TXA-17 document completion status {status!r} ({_UNFINISHED[status]}): the document is not "
                         "finished", where=txa.where(17))
    pdfs = pdf_documents(msg)       # a PDF split over several OBX (same OBX-3 and OBX-4) is one document
    if len(pdfs) > 1:
        raise ParseError(f"MDM^T02 with {len(pdfs)} PDF documents: one document per message (the others would be "
                         "lost)", where=pdfs[1][0].where(5))
    pdf = b""
    for seg, parts in pdfs:
        for part in (seg, *parts):
            if part.get(11).strip().upper() in ("P", "I", "D", "X", "W"):
                raise ParseError(f"OBX-11 result status {part.get(11).strip().upper()!r}: the document is not final",
                                 where=part.where(11))
        pdf = pdf_of_ed(msg, seg, parts)
    if not pdf:
        raise ParseError("MDM^T02 without an OBX ED carrying a PDF (OBX-5 ^application^pdf^Base64^...)",
                         where="OBX")
    p = read_patient(msg)
    m: dict[str, str] = {k: v for k, v in {
        "patient_ins": p.ins, "patient_ins_oid": p.ins_oid, "patient_id": p.local_id,
        "patient_id_oid": p.local_id_oid, "patient_family": p.family, "patient_given": p.given,
        "patient_first_given": p.first_name, "patient_used_family": p.used_family,
        "patient_used_given": p.used_given, "patient_birth_date": p.birth_date, "patient_sex": p.sex,
        "patient_birth_place_cog": p.birth_place_cog, "patient_birth_place_city": p.birth_place_city}.items() if v}
    code = msg.comps(txa.get(2), 3)
    if code[0]:
        if not _LOINC.match(code[0]):
            raise ParseError("TXA-2 document type must be a LOINC code", where=txa.where(2))
        m["doc_code"] = code[0]
        if code[1]:
            m["title"] = code[1]
    for n, key in ((4, "service_start"), (6, "effective_time")):
        if txa.get(n).strip():
            m[key] = norm_ts(txa.get(n), txa.where(n))
    for n in (5, 9, 22):
        author = msg.comps((msg.reps(txa.get(n)) or [""])[0], 3)
        if author[0] or author[1]:
            ident = author[0]
            if ident:
                ident = ident[1:] if len(ident) == 12 and ident.startswith("8") else ident
                if not re.fullmatch(r"\d{11}", ident):
                    raise ParseError("author id must be an RPPS (11 digits, or 12 with the leading 8)",
                                     where=txa.where(n))
                m["author_rpps"] = ident
            m["author_family"], m["author_given"] = author[1], author[2]
            break
    doc = msg.comps(txa.get(12), 4)
    if doc[0]:
        if not _OID.match(doc[2]):
            raise ParseError("TXA-12 unique document number needs its root OID in TXA-12.3", where=txa.where(12))
        m["doc_id_root"], m["doc_id_ext"] = doc[2], doc[0]
    conf = txa.get(18).strip().upper()
    if conf:
        m["confidentiality"] = conf
    pv1 = msg.first("PV1")
    if pv1 is not None:
        visit = msg.comps(pv1.get(19), 4)
        authority = msg.subs(visit[3], 3)
        if visit[0] and _OID.match(authority[1]):
            m["encounter_id_root"], m["encounter_id_ext"] = authority[1], visit[0]
        for n, key in ((44, "service_start"), (45, "service_stop")):
            if pv1.get(n).strip():
                m[key] = norm_ts(pv1.get(n), pv1.where(n))
    return pdf, {k: v for k, v in m.items() if v}
