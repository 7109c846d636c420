"""Document metadata supplied around a document (PDF letters; completion of lab reports).

The model (docs/transform.md §3, JSON Schema `hub/transform/data/document-metadata.schema.json`) covers every header
element an LDL-SES N1 needs. Internally it is a flat dict of string keys (`KEYS`); a sender may write it
  * flat (the hub's own keys: `{"patient_family": "...", ...}`),
  * nested, as the model (`{"document": {...}, "patient": {...}, "author": {...}, "organization": {...},
    "gp": {...}, "encounter": {...}}`, paths in `MODEL`),
  * or in its own JSON, with a per-sender mapping (sender profile `metadata_map`: model path -> the sender's path,
    `a.b[0].c`, `ids[type=INS].value`).
Layers, lowest precedence first: the sender profile's constants, an HL7 MDM^T02 (TXA/PID/PV1), the `*.json` part,
the `X-Hub-*` headers, the rule's `params.metadata`. Dates: ISO 8601 (`2025-04-02T15:12:00+02:00`, `2025-04-02`),
CDA/HL7 digits (`20250402151200+0200`), or `dd/mm/yyyy` for the birth date. Every value is untrusted: a bad one is
a ParseError naming its key or header, never quoting the value. Unknown keys are ignored. Reads no settings.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import replace
from email.message import EmailMessage
from typing import Any, Mapping

from hub.errors import ParseError
from hub.transform.model import INS_OIDS, DocumentMeta, LabReport, Party, Patient, is_nir
from hub.transform.parse.mime import header_text
from hub.transform.parse.text import decode_text
from hub.transform.terminology.dates import any_ts
from hub.transform.terminology.valuesets import (CONFIDENTIALITY, FACILITY_TYPE, PRACTICE_SETTING, SPECIALTY,
                                                 ValueSets)

HEADERS = {
    "X-Hub-Patient-INS": "patient_ins", "X-Hub-Patient-INS-OID": "patient_ins_oid",
    "X-Hub-Patient-ID": "patient_id", "X-Hub-Patient-ID-OID": "patient_id_oid",
    "X-Hub-Patient-Family": "patient_family", "X-Hub-Patient-Given": "patient_given",
    "X-Hub-Patient-First-Given": "patient_first_given", "X-Hub-Patient-Used-Family": "patient_used_family",
    "X-Hub-Patient-Used-Given": "patient_used_given", "X-Hub-Patient-Birth-Date": "patient_birth_date",
    "X-Hub-Patient-Sex": "patient_sex", "X-Hub-Patient-Birth-Place": "patient_birth_place_cog",
    "X-Hub-Author-RPPS": "author_rpps", "X-Hub-Author-Family": "author_family",
    "X-Hub-Author-Given": "author_given", "X-Hub-Org-FINESS": "org_finess", "X-Hub-Org-Name": "org_name",
}
# model path (nested JSON, the JSON Schema) -> flat key
MODEL = {
    "document.id.root": "doc_id_root", "document.id.extension": "doc_id_ext",
    "document.set_id.root": "set_id_root", "document.set_id.extension": "set_id_ext",
    "document.version": "version", "document.code": "doc_code", "document.title": "title",
    "document.effective_time": "effective_time", "document.confidentiality": "confidentiality",
    "patient.ins.value": "patient_ins", "patient.ins.oid": "patient_ins_oid",
    "patient.ipp.value": "patient_id", "patient.ipp.oid": "patient_id_oid",
    "patient.birth_name": "patient_family", "patient.birth_given_names": "patient_given",
    "patient.first_given_name": "patient_first_given", "patient.used_name": "patient_used_family",
    "patient.used_given_name": "patient_used_given", "patient.birth_date": "patient_birth_date",
    "patient.sex": "patient_sex", "patient.birth_place.cog": "patient_birth_place_cog",
    "patient.birth_place.city": "patient_birth_place_city", "patient.address": "patient_address",
    "author.rpps": "author_rpps", "author.family": "author_family", "author.given": "author_given",
    "author.specialty": "author_specialty", "author.time": "author_time", "author.telecom": "author_telecom",
    "organization.finess": "org_finess", "organization.name": "org_name", "organization.address": "org_addr",
    "organization.telecom": "org_telecom",
    "gp.rpps": "gp_rpps", "gp.family": "gp_family", "gp.given": "gp_given", "gp.telecom": "gp_telecom",
    "encounter.id.root": "encounter_id_root", "encounter.id.extension": "encounter_id_ext",
    "encounter.start": "service_start", "encounter.end": "service_stop",
    "encounter.facility_type": "facility_code", "encounter.practice_setting": "practice_setting",
}
KEYS = frozenset(HEADERS.values()) | frozenset(MODEL.values())
LIST_KEYS = frozenset({"patient_address", "org_addr"})
DATE_KEYS = ("effective_time", "service_start", "service_stop", "author_time")
_WHERE = {v: k for k, v in HEADERS.items()}
_LOWER = {k.lower(): v for k, v in HEADERS.items()}
_PATH = re.compile(r"([^.\[\]]+)|\[(\d+)\]|\[([^=\]]+)=([^\]]*)\]")
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
MAX_JSON = 65536


class HeaderLayer(dict):
    """Metadata read from the X-Hub-* headers: a bad value is reported by its header's name."""


def _where(key: str) -> str:
    return f"metadata.{key}"


def from_headers(headers: EmailMessage) -> HeaderLayer:
    found = header_text(headers, _LOWER.keys())
    return HeaderLayer({_LOWER[low]: value for low, value in found.items()})


# the ways hospitals' software writes the administrative sex, as the CDA codes it: M, F, U (HL7 v2 table 0001's
# A, N, O have no CDA code but unknown); compared without accents and case
_SEX = {**dict.fromkeys(("M", "H", "1", "HOMME", "MASCULIN", "MALE", "MAN"), "M"),
        **dict.fromkeys(("F", "2", "FEMME", "FEMININ", "FEMALE", "WOMAN"), "F"),
        **dict.fromkeys(("U", "I", "0", "9", "INCONNU", "INDETERMINE", "UNKNOWN", "A", "N", "O"), "U")}


def load_json(data: bytes) -> Any:
    if len(data) > MAX_JSON:
        raise ParseError(f"metadata JSON larger than {MAX_JSON} bytes", where="metadata.json")
    try:
        # JSON is UTF-8 (RFC 8259); Windows software also writes a BOM, or Windows-1252 (decode_text's rule: bytes
        # that are not UTF-8 are ISO-8859-1 / Windows-1252, never guessed further)
        obj = json.loads(decode_text(data, "JSON"))
    except ParseError as exc:           # "line N: JSON: control character U+0001 in the text (...)"
        detail = str(exc).removeprefix(f"{exc.where}: JSON: ")
        raise ParseError(f"metadata JSON is not valid: {detail}, {exc.where}", where="metadata.json") from None
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"metadata JSON is not valid: {exc}", where="metadata.json") from None
    if not isinstance(obj, dict):
        raise ParseError("metadata JSON must be an object", where="metadata.json")
    return obj


def from_json(data: bytes, mapping: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A JSON part in any of the three forms (mapped when the sender has a `metadata_map`)."""
    obj = load_json(data)
    if mapping:
        obj = apply_mapping(obj, mapping)
    return from_object(obj)


def from_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keys, or the nested model (both may be mixed)."""
    out: dict[str, Any] = {}
    for path, key in MODEL.items():
        value = lookup(obj, path)
        if value is not None:
            out[key] = value
    for k, v in obj.items():
        if k in KEYS and isinstance(v, (str, int, list)):
            out[k] = v
    return out


def lookup(obj: Any, path: str) -> Any:
    """`a.b[0].c`, `ids[type=INS].value` in a JSON value; None when absent."""
    cur = obj
    for name, index, key, want in _PATH.findall(path):
        if name:
            cur = cur.get(name) if isinstance(cur, dict) else None
        elif index:
            cur = cur[int(index)] if isinstance(cur, list) and int(index) < len(cur) else None
        else:
            cur = next((e for e in cur if isinstance(e, dict) and str(e.get(key)) == want), None) \
                if isinstance(cur, list) else None
        if cur is None:
            return None
    return cur


def apply_mapping(obj: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """The sender's JSON -> the nested model, through `model path = sender path` pairs (unmapped model paths are
    read from the sender's JSON as they are, so a sender may also write part of the model directly)."""
    out: dict[str, Any] = {k: v for k, v in obj.items() if k in KEYS}
    for path in MODEL:
        src = mapping.get(path)
        value = lookup(obj, src) if src else lookup(obj, path)
        if value is None:
            continue
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _text(key: str, value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
        raise ParseError("expected a string", where=where)
    if isinstance(value, list):
        if not all(isinstance(v, (str, int)) for v in value):
            raise ParseError("expected a list of strings", where=where)
        value = ("\n" if key in LIST_KEYS else " ").join(str(v).strip() for v in value if str(v).strip())
    text = str(value).strip()
    if "\x00" in text or re.search(r"[\ud800-\udfff]", text):
        raise ParseError("a NUL or an invalid character in the value", where=where)
    return text


def merge(*layers: Mapping[str, Any] | None, vs: ValueSets | None = None) -> dict[str, str]:
    """Later layers override earlier ones; a bad value is reported by its header (X-Hub-...) or its key."""
    out: dict[str, str] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        header = isinstance(layer, HeaderLayer)
        for k, v in (layer or {}).items():
            if k in KEYS and v is not None:
                where = _WHERE[k] if header else f"metadata.{k}"
                text = _text(k, v, where)
                if text:
                    out[k] = text
                    origin[k] = where
    return _check(out, vs or ValueSets(), origin)


def _check(m: dict[str, str], vs: ValueSets, origin: Mapping[str, str] | None = None) -> dict[str, str]:
    def _where(key: str) -> str:         # noqa: F811  (the origin of each value)
        return (origin or {}).get(key) or f"metadata.{key}"

    for key in ("patient_ins_oid", "patient_id_oid", "doc_id_root", "set_id_root", "encounter_id_root"):
        if m.get(key, "").lower().startswith("urn:oid:"):     # an OID as a URI (FHIR-style identifiers)
            m[key] = m[key][8:]
    ins = m.get("patient_ins", "").replace(" ", "")
    if ins:
        if not is_nir(ins):
            raise ParseError("INS must be 15 characters (NIR or NIA with its key)", where=_where("patient_ins"))
        m["patient_ins"] = ins
    oid = m.get("patient_ins_oid", "")
    if oid and oid not in INS_OIDS:
        raise ParseError("unknown INS OID (1.2.250.1.213.1.4.8 NIR, .9 NIA; .10/.11 test)",
                         where=_where("patient_ins_oid"))
    for key in ("patient_id_oid", "doc_id_root", "set_id_root", "encounter_id_root"):
        if key in m and not _OID.match(m[key]):
            raise ParseError("expected an OID (digits and dots)", where=_where(key))
    if "patient_birth_date" in m:
        raw = m["patient_birth_date"]
        m["patient_birth_date"] = any_ts(raw, _where("patient_birth_date"))[:8]
        if len(m["patient_birth_date"]) != 8:
            raise ParseError("expected a full birth date", where=_where("patient_birth_date"))
    for key in DATE_KEYS:
        if key in m:
            m[key] = any_ts(m[key], _where(key))
    if m.get("patient_sex", "").strip():
        sex = _SEX.get(unicodedata.normalize("NFKD", m["patient_sex"]).encode("ascii", "ignore").decode()
                       .strip().upper())
        if sex is None:
            raise ParseError("sex must be M, F or U (also read: H, 1, 2, Homme, Femme, Masculin, Féminin, Inconnu; "
                             "HL7 table 0001)", where=_where("patient_sex"))
        m["patient_sex"] = sex
    cog = m.get("patient_birth_place_cog", "")
    if cog and not re.fullmatch(r"\d[\dAB]\d{3}", cog):
        raise ParseError("birth place must be an INSEE COG code (5 characters; 99xxx abroad)",
                         where=_where("patient_birth_place_cog"))
    for prefix in ("author", "gp"):
        rpps = m.get(f"{prefix}_rpps", "")
        if rpps:
            rpps = rpps[1:] if len(rpps) == 12 and rpps.startswith("8") else rpps
            if not re.fullmatch(r"\d{11}", rpps):
                raise ParseError("RPPS must be 11 digits", where=_where(f"{prefix}_rpps"))
            m[f"{prefix}_rpps"] = rpps
    finess = m.get("org_finess", "")
    if finess:
        finess = finess[1:] if len(finess) == 10 and finess.startswith("1") else finess
        if not re.fullmatch(r"\d[\dAB]\d{7}", finess):
            raise ParseError("FINESS must be 9 characters", where=_where("org_finess"))
        m["org_finess"] = finess
    if "doc_code" in m and not re.fullmatch(r"\d{1,7}-\d", m["doc_code"]):
        raise ParseError("doc_code must be a LOINC code", where="metadata.doc_code")
    if "version" in m and not (m["version"].isdigit() and int(m["version"]) > 0):
        raise ParseError("version must be a positive integer", where="metadata.version")
    for key, system in (("confidentiality", CONFIDENTIALITY), ("facility_code", FACILITY_TYPE),
                        ("practice_setting", PRACTICE_SETTING), ("author_specialty", SPECIALTY)):
        if key in m and not vs.known(system, m[key]):
            raise ParseError("code not in its ANS value set", where=f"metadata.{key}")
    if m.get("confidentiality", "N") not in ("N", "R", "V"):
        raise ParseError("confidentiality must be N, R or V", where="metadata.confidentiality")
    return m


def _lines(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split("\n") if x.strip())


def patient(m: dict[str, str], base: Patient | None = None) -> Patient:
    b = base or Patient()
    family = m.get("patient_family", "").upper() or b.family
    return replace(b, ins=m.get("patient_ins", b.ins), ins_oid=m.get("patient_ins_oid", b.ins_oid),
                   local_id=m.get("patient_id", b.local_id), local_id_oid=m.get("patient_id_oid", b.local_id_oid),
                   family=family, given=m.get("patient_given", b.given),
                   first_name=m.get("patient_first_given", b.first_name),
                   used_family=m.get("patient_used_family", "").upper() or b.used_family,
                   used_given=m.get("patient_used_given", b.used_given),
                   birth_date=m.get("patient_birth_date", b.birth_date), sex=m.get("patient_sex", b.sex),
                   birth_place_cog=m.get("patient_birth_place_cog", b.birth_place_cog),
                   birth_place_city=m.get("patient_birth_place_city", b.birth_place_city),
                   address=_lines(m["patient_address"]) if "patient_address" in m else b.address)


def author(m: dict[str, str], base: Party | None = None) -> Party:
    b = base or Party()
    return replace(b, rpps=m.get("author_rpps", b.rpps), family=m.get("author_family", b.family),
                   given=m.get("author_given", b.given), org_finess=m.get("org_finess", b.org_finess),
                   org_name=m.get("org_name", b.org_name),
                   addr=_lines(m["org_addr"]) if "org_addr" in m else b.addr,
                   telecom=m.get("org_telecom", m.get("author_telecom", b.telecom)),
                   specialty=m.get("author_specialty", b.specialty))


def gp(m: dict[str, str]) -> Party | None:
    if not m.get("gp_rpps"):
        return None
    return Party(rpps=m["gp_rpps"], family=m.get("gp_family", ""), given=m.get("gp_given", ""),
                 telecom=m.get("gp_telecom", ""))


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
    if m.get("doc_id_ext") and not m.get("doc_id_root"):
        raise ParseError("a document id extension needs its root OID", where="metadata.doc_id_root")
    return DocumentMeta(patient=patient(m), author=author(m), doc_code=m.get("doc_code", doc_code),
                        title=m.get("title", title), effective_time=m.get("effective_time", now),
                        service_start=m.get("service_start", ""), service_stop=m.get("service_stop", ""),
                        confidentiality=m.get("confidentiality", "N"), facility_code=m.get("facility_code", "SA01"),
                        practice_setting=m.get("practice_setting", "ETABLISSEMENT"),
                        author_specialty=m.get("author_specialty", ""), author_time=m.get("author_time", ""),
                        doc_id_root=m.get("doc_id_root", ""), doc_id_ext=m.get("doc_id_ext", ""),
                        set_id_root=m.get("set_id_root", ""), set_id_ext=m.get("set_id_ext", ""),
                        version=int(m.get("version", "1")), gp=gp(m),
                        encounter_id_root=m.get("encounter_id_root", ""),
                        encounter_id_ext=m.get("encounter_id_ext", ""))


def complete_report(report: LabReport, m: dict[str, str], ins_policy: str = "") -> LabReport:
    """Fill what HPRIM cannot carry (INS OID, biologist RPPS, lab FINESS, address) from metadata. `ins_policy`: the
    sender profile's `ins_oid` (an OID for the INS it sends without one; "none": its NIRs are not qualified INS)."""
    p = report.patient
    if ins_policy == "none" and not m.get("patient_ins_oid"):
        p = replace(p, ins_oid="")
    elif ins_policy and p.ins and not p.ins_oid:
        p = replace(p, ins_oid=ins_policy)
    report = replace(report, patient=p)
    if not m:
        return report
    sender = author(m, report.sender)
    if report.sender.family or report.sender.rpps:   # the validating biologist the report names wins
        sender = replace(sender, rpps=report.sender.rpps, family=report.sender.family, given=report.sender.given)
    return replace(report, patient=patient(m, report.patient), sender=sender)
