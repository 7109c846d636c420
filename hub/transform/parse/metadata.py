"""Document metadata supplied around a document (PDF chain, and completion of lab reports): merged from, lowest
precedence first, an accompanying `*.json` part, the `X-Hub-*` message headers, and the caller's `params["metadata"]`.

Keys (all strings): patient_ins, patient_ins_oid, patient_id, patient_family, patient_given, patient_birth_date
(YYYYMMDD), patient_sex (M/F/U), author_rpps (11 digits, or 12 with the leading 8), author_family, author_given,
author_specialty, org_finess (9 characters, or 10 with the leading 1), org_name, doc_code, title, effective_time,
service_start, service_stop, confidentiality, facility_code, practice_setting. Every value is untrusted: a bad value
is a ParseError naming its key or header. Unknown keys are ignored. Reads no settings.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from email.message import EmailMessage

from hub.errors import ParseError
from hub.transform.terminology.dates import norm_ts
from hub.transform.parse.mime import header_text
from hub.transform.model import INS_OIDS, DocumentMeta, LabReport, Party, Patient, is_nir

HEADERS = {
    "X-Hub-Patient-INS": "patient_ins", "X-Hub-Patient-INS-OID": "patient_ins_oid",
    "X-Hub-Patient-ID": "patient_id", "X-Hub-Patient-Family": "patient_family",
    "X-Hub-Patient-Given": "patient_given", "X-Hub-Patient-Birth-Date": "patient_birth_date",
    "X-Hub-Patient-Sex": "patient_sex", "X-Hub-Author-RPPS": "author_rpps", "X-Hub-Author-Family": "author_family",
    "X-Hub-Author-Given": "author_given", "X-Hub-Org-FINESS": "org_finess", "X-Hub-Org-Name": "org_name",
}
KEYS = frozenset(HEADERS.values()) | {"author_specialty", "doc_code", "title", "effective_time", "service_start",
                                      "service_stop", "confidentiality", "facility_code", "practice_setting"}
_WHERE = {v: k for k, v in HEADERS.items()}
_LOWER = {k.lower(): v for k, v in HEADERS.items()}
MAX_JSON = 65536


def _where(key: str) -> str:
    return _WHERE.get(key, f"metadata.{key}")


def from_headers(headers: EmailMessage) -> dict[str, str]:
    found = header_text(headers, _LOWER.keys())
    return {_LOWER[low]: value for low, value in found.items()}


def from_json(data: bytes) -> dict[str, str]:
    if len(data) > MAX_JSON:
        raise ParseError(f"metadata JSON larger than {MAX_JSON} bytes", where="metadata.json")
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError(f"metadata JSON is not valid: {exc}", where="metadata.json") from None
    if not isinstance(obj, dict):
        raise ParseError("metadata JSON must be an object", where="metadata.json")
    return {k: str(v) for k, v in obj.items() if k in KEYS and isinstance(v, (str, int))}


def merge(*layers: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if k in KEYS and v is not None and str(v).strip():
                out[k] = str(v).strip()
    return _check(out)


def _check(m: dict[str, str]) -> dict[str, str]:
    ins = m.get("patient_ins", "").replace(" ", "")
    if ins:
        if not is_nir(ins):
            raise ParseError("INS must be 15 characters (NIR or NIA with its key)", where=_where("patient_ins"))
        m["patient_ins"] = ins
    oid = m.get("patient_ins_oid", "")
    if oid and oid not in INS_OIDS:
        raise ParseError(f"unknown INS OID {oid!r}", where=_where("patient_ins_oid"))
    for key in ("patient_birth_date",):
        if key in m:
            m[key] = norm_ts(m[key], _where(key))[:8]
            if len(m[key]) != 8:
                raise ParseError("expected YYYYMMDD", where=_where(key))
    for key in ("effective_time", "service_start", "service_stop"):
        if key in m:
            m[key] = norm_ts(m[key], _where(key))
    sex = m.get("patient_sex", "").upper()
    if sex and sex not in ("M", "F", "U"):
        raise ParseError("sex must be M, F or U", where=_where("patient_sex"))
    if sex:
        m["patient_sex"] = sex
    rpps = m.get("author_rpps", "")
    if rpps:
        rpps = rpps[1:] if len(rpps) == 12 and rpps.startswith("8") else rpps
        if not re.fullmatch(r"\d{11}", rpps):
            raise ParseError("RPPS must be 11 digits", where=_where("author_rpps"))
        m["author_rpps"] = rpps
    finess = m.get("org_finess", "")
    if finess:
        finess = finess[1:] if len(finess) == 10 and finess.startswith("1") else finess
        if not re.fullmatch(r"\d[\dAB]\d{7}", finess):
            raise ParseError("FINESS must be 9 characters", where=_where("org_finess"))
        m["org_finess"] = finess
    if "doc_code" in m and not re.fullmatch(r"\d{1,7}-\d", m["doc_code"]):
        raise ParseError("doc_code must be a LOINC code", where="metadata.doc_code")
    if m.get("confidentiality", "N") not in ("N", "R", "V"):
        raise ParseError("confidentiality must be N, R or V", where="metadata.confidentiality")
    return m


def patient(m: dict[str, str], base: Patient | None = None) -> Patient:
    b = base or Patient()
    given = m.get("patient_given", b.given)
    return replace(b, ins=m.get("patient_ins", b.ins), ins_oid=m.get("patient_ins_oid", b.ins_oid),
                   local_id=m.get("patient_id", b.local_id), family=m.get("patient_family", b.family).upper(),
                   used_family=m.get("patient_family", b.used_family).upper() if "patient_family" in m
                   else b.used_family, given=given, birth_date=m.get("patient_birth_date", b.birth_date),
                   sex=m.get("patient_sex", b.sex))


def author(m: dict[str, str], base: Party | None = None) -> Party:
    b = base or Party()
    return replace(b, rpps=m.get("author_rpps", b.rpps), family=m.get("author_family", b.family),
                   given=m.get("author_given", b.given), org_finess=m.get("org_finess", b.org_finess),
                   org_name=m.get("org_name", b.org_name))


def document_meta(m: dict[str, str], *, doc_code: str, title: str, now: str) -> DocumentMeta:
    missing = [k for k in ("patient_family", "patient_birth_date") if not m.get(k)]
    if not (m.get("patient_ins") or m.get("patient_id")):
        missing.append("patient_ins or patient_id")
    if not (m.get("org_finess") or m.get("org_name")):
        missing.append("org_finess or org_name")
    if missing:
        raise ParseError(f"missing document metadata: {', '.join(missing)}", where="metadata")
    if m.get("patient_ins") and not m.get("patient_ins_oid"):
        raise ParseError("an INS needs its OID", where=_where("patient_ins_oid"))
    return DocumentMeta(patient=patient(m), author=author(m), doc_code=m.get("doc_code", doc_code),
                        title=m.get("title", title), effective_time=m.get("effective_time", now),
                        service_start=m.get("service_start", ""), service_stop=m.get("service_stop", ""),
                        confidentiality=m.get("confidentiality", "N"), facility_code=m.get("facility_code", "SA01"),
                        practice_setting=m.get("practice_setting", "ETABLISSEMENT"),
                        author_specialty=m.get("author_specialty", ""))


def complete_report(report: LabReport, m: dict[str, str]) -> LabReport:
    """Fill what HPRIM cannot carry (INS OID, biologist RPPS, lab FINESS) from metadata."""
    if not m:
        return report
    return replace(report, patient=patient(m, report.patient), sender=author(m, report.sender))
