"""The named transform chains: the one place that composes parsers (`parse/`), terminology (`terminology/`),
builders (`build/`) and validators (`validate/`); `hub.transform.registry.build_registry` registers them.

Each chain: (context, raw RFC 5322 message bytes, params) -> TransformOutcome. Input is untrusted; every CDA the
hub produces or relays is validated against the CDA schema before it is packaged, or the chain raises TransformError.
Common params: `now` (datetime or ISO 8601 string, default: the clock), `tz` (default "Europe/Paris"), `body`
(text of the outgoing mail), `metadata` (dict, see `hub.transform.parse.metadata`). Chain-specific params:
docs/transform.md.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pybase64

from hub.errors import ParseError, TransformError
from hub.transform.build import mss
from hub.transform.build.cda import finish, n1_frame
from hub.transform.build.cda_bio import CHAPTERS, INTERPRETATION, build_cr_bio_n3, in_entries
from hub.transform.build.pdf_report import render_report
from hub.transform.build.xdm import build_xdm, read_xdm
from hub.transform.model import FINAL, NOT_ASKED, PRELIMINARY, WITHDRAWN, LabReport
from hub.transform.parse import metadata as md
from hub.transform.parse.cda_info import CdaInfo, read_cda
from hub.transform.parse.cisis import build_ack, read_cisis
from hub.transform.parse.detect import classify
from hub.transform.parse.hl7v2 import parse_er7, read_lab_oru, read_patient
from hub.transform.parse.mdm import read_mdm
from hub.transform.parse.hprim import parse_hprim_net, parse_hprim_sante
from hub.transform.parse.mime import Part, pdf_complete, walk
from hub.transform.senders import SenderProfile
from hub.transform.steps import Context, Steps, TransformOutcome
from hub.transform.terminology.dates import now_ts

V = "1.0"


def _now(params: Mapping[str, Any]) -> datetime:
    now = params.get("now")
    if isinstance(now, str):
        try:
            now = datetime.fromisoformat(now)
        except ValueError:
            raise ParseError(f"invalid now {now!r}", where="params.now") from None
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def _tz(params: Mapping[str, Any]) -> ZoneInfo:
    try:
        return ZoneInfo(str(params.get("tz", "Europe/Paris")))
    except (ZoneInfoNotFoundError, ValueError):
        raise ParseError(f"unknown time zone {params.get('tz')!r}", where="params.tz") from None


def _find(parts: list[Part], *kinds: str, flavour: str = "") -> tuple[Part, str] | None:
    for part in parts:
        d = _classify(part)
        if d.kind in kinds and (not flavour or d.flavour == flavour):
            return part, d.kind
    return None


def _classify(part: Part):
    """classify() once per part: the Part is frozen, its sniffing result is cached alongside it."""
    cached = part.__dict__.get("_detected")
    if cached is None:
        cached = classify(part)
        object.__setattr__(part, "_detected", cached)
    return cached


def _metadata(ctx: Context, top, parts: list[Part], params: Mapping[str, Any],
              mdm: Mapping[str, str] | None = None) -> dict[str, str]:
    """Lowest precedence first: the sender profile, an MDM^T02, the JSON part, the X-Hub-* headers, the rule."""
    sender: SenderProfile = params.get("sender") or SenderProfile()
    found = _find(parts, "json")
    layer = md.from_json(found[0].payload(), sender.metadata_map) if found else {}
    return md.merge(sender.metadata, mdm, layer, md.from_headers(top), dict(params.get("metadata") or {}),
                    vs=ctx.value_sets)


def _cda_step(ctx: Context, steps: Steps, name: str, data_in: bytes, xml: str | bytes,
              warnings: list[str] = ()) -> tuple[bytes, CdaInfo]:
    try:
        data, validation, root = finish(xml, ctx.validator)
    except TransformError as exc:
        raise steps.fail(name, V, data_in, exc) from None
    steps.add(name, V, data_in, data, validation, warnings)
    info = read_cda(root)
    _conform(ctx, steps, data, info, produced=True)
    return data, info


def _conform(ctx: Context, steps: Steps, data: bytes, info: CdaInfo, *, produced: bool,
             check: bytes | None = None) -> None:
    """The ANS schematrons (volet + profiles) on a CDA: step `cda_schematron`. A document the hub produced that
    fails an assertion is not sent when `transform.on_nonconformant` is "hold" (the rule's on_invalid decides, as for
    any failed transformation); with "warn", and always for a sender's own CDA relayed as is, it goes with a warning.
    The audit records the rule ids and locations only. `check`: the bytes to check when they differ from `data`
    (the N1 with a stand-in for the PDF's base64)."""
    if not ctx.schematrons.enabled:
        return
    result = ctx.schematrons.check(check or data, info.templates, info.code)
    validation = result.summary()
    if result.ok:
        steps.add("cda_schematron", V, data, data, validation)
        return
    if produced and ctx.on_nonconformant == "hold":
        err = TransformError(f"the document does not pass the ANS schematrons: {validation}")
        err.validation = f"invalid: {validation}"
        raise steps.fail("cda_schematron", V, data, err)
    steps.add("cda_schematron", V, data, data, f"invalid: {validation}",
              [f"sent although not conformant to the ANS schematrons: {len(result.failures)} failed assertion(s)"])


def _package(ctx: Context, steps: Steps, top, docs: list[tuple[CdaInfo, bytes]], params: Mapping[str, Any],
             seed: bytes, now: datetime, *, pdf: tuple[bytes, str] | None = None,
             pdf_lines: memoryview | None = None, to: list[str] | None = None, body: str = "",
             recipients: list[str] | None = None, ack: bytes | None = None) -> TransformOutcome:
    """XDM of the CDAs -> outgoing message. pdf_lines: the PDF's base64 MIME lines, when already at hand."""
    submission = now.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")
    xdm = build_xdm(docs, seed=seed, hub_oid=ctx.hub_oid, submission_time=submission, sender=ctx.nil)
    steps.add("cda_to_xdm", V, b"".join(d for _, d in docs), xdm)
    infos = [i for i, _ in docs]
    text = params.get("body") or body or f"Veuillez trouver ci-joint le document « {infos[0].title} »."
    message = mss.outgoing(top, infos, xdm, nil=ctx.nil, body_text=text, pdf=pdf[0] if pdf else None,
                           pdf_name=pdf[1] if pdf else "", pdf_lines=pdf_lines, to=to)
    steps.add("mss_message", V, xdm, message)
    p = infos[0].patient
    return TransformOutcome(message=message, steps=steps.records, patient_ins=p.ins or None,
                            patient_ins_oid=p.ins_oid or None, doc_codes=[i.code for i in infos],
                            recipients=list(recipients or []), ack=ack)


_RESULT_STATUS = {"hprim_sante": "OBX-11", "hprim_net": "RES field 9", "hl7_oru": "OBX-11"}
_DATED_BY = {"hprim_sante": "H-14 and OBR-22", "hprim_net": "line 10 (date of the report)",
             "hl7_oru": "MSH-7 and OBR-22"}


def _lab_to_cda(ctx: Context, steps: Steps, report: LabReport, name: str, raw: bytes, params, seed: bytes,
                now: datetime, pdf: bytes | None, warnings: list[str]) -> tuple[bytes, CdaInfo]:
    tz = _tz(params)
    chapter = str(params.get("chapter", "18719-5"))
    if chapter not in CHAPTERS:
        raise ParseError(f"unknown chapter {chapter!r} (one of {', '.join(sorted(CHAPTERS))})", where="params.chapter")
    if not report.report_date:      # else the conversion time would pass for the validation and analysis times
        raise ParseError("the report has no date: it cannot be dated (validation, analyses) from the file",
                         where=_DATED_BY.get(report.source, "report date"))
    if not report.sender.rpps:
        warnings.append("no RPPS for the validating biologist: author id sent as nullFlavor UNK")
    if not report.sender.family:
        warnings.append("no name for the validating biologist: sent as nullFlavor UNK")
    for res in report.results:
        code = res.local_code or res.loinc
        for flag in res.flags:
            if flag.upper() not in INTERPRETATION:
                warnings.append(f"flag {flag!r} of {code!r} is not an HL7 interpretation code: written in the "
                                "narrative only")
        if res.file_reference:
            warnings.append(f"result {code!r} is a file reference (OBX type {res.value_type}): the file is not part of "
                            "the report; not sent as a result value")
        elif res.state in (WITHDRAWN, NOT_ASKED):
            warnings.append(f"result {code!r} has status {res.status!r} ("
                            + ("deleted or posted in error" if res.state == WITHDRAWN else "not asked")
                            + "): not sent as a result")
        elif res.state in (FINAL, PRELIMINARY) and not res.value.strip():
            warnings.append(f"result {code!r} has no value: written in the narrative only")
    if not any(in_entries(r) for r in report.results):
        raise ParseError("the report has no result to file: every result is still to come, withdrawn, without a "
                         "value or a file reference", where=_RESULT_STATUS.get(report.source, "result status"))
    if any(r.corrected for r in report.results):
        warnings.append("corrected result(s) (OBX-11 C): sent as a new report, marked 'résultat corrigé'; the report "
                        "they correct is not replaced (no RPLC association)")
    if report.partial:
        warnings.append("partial report (a request or a result not final): sent as a partial report (active)")
    if not report.patient.ins_oid:
        warnings.append("no qualified INS: patient identified by the lab's local id")
    elif not report.patient.birth_place_cog:
        warnings.append("INS without the birth place (COG code): birth place sent as nullFlavor UNK")
    if pdf is None:
        pdf = render_report(report)
        steps.add("report_to_pdf", V, raw, pdf)
    xml = build_cr_bio_n3(report, doc_id_root=f"{ctx.hub_oid}.1", doc_id_ext=seed.hex()[:32],
                          local_id_root=f"{ctx.hub_oid}.3", local_code_system=f"{ctx.hub_oid}.4", tz=tz,
                          effective_time=now_ts(tz, now), vs=ctx.value_sets, pdf_b64=_PDF_MARK, chapter=chapter)
    head, tail = xml.encode("utf-8").rsplit(_PDF_MARK.encode("ascii"), 1)   # the last one: the PDF section ends it
    try:                       # the PDF copy's base64 checked with a stand-in, as for the N1 (see _PDF_STAND_IN)
        checked, validation, root = finish(head + _PDF_STAND_IN + tail, ctx.validator)
    except TransformError as exc:
        raise steps.fail(name, V, raw, exc) from None
    data = b"".join((head, pybase64.b64encode(pdf), tail))
    steps.add(name, V, raw, data, validation, warnings)
    info = read_cda(root)
    _conform(ctx, steps, data, info, produced=True, check=checked)
    return data, info


def _pdf(parts: list[Part]) -> tuple[bytes, str] | None:
    found = _find(parts, "pdf")
    if not found:
        return None
    pdf, name = found[0].payload(), found[0].filename or "document.pdf"
    _complete_pdf(pdf[-1024:], "PDF attachment")
    return pdf, name


def _complete_pdf(tail: bytes, where: str) -> None:     # where: never the file name (it may name the patient)
    if not pdf_complete(tail):
        raise ParseError("the PDF has no end marker (%%EOF) at its end: the document is incomplete (cut in transit?)",
                         where=where)


def _lab_report(ctx: Context, report: LabReport, top, parts: list[Part], params) -> tuple[LabReport, list[str]]:
    sender: SenderProfile = params.get("sender") or SenderProfile()
    report = md.complete_report(report, _metadata(ctx, top, parts, params), sender.ins_oid)
    return ctx.loinc.apply(report)


def hprim_to_cda_xdm(ctx: Context, message: bytes, params: Mapping[str, Any]) -> TransformOutcome:
    top, parts = walk(message)
    found = _find(parts, "hprim_sante", "hprim_net")
    if found is None:
        raise TransformError("no HPRIM Santé or HPRIM Net content in the message")
    part, kind = found
    raw = part.payload()
    reports = parse_hprim_sante(raw) if kind == "hprim_sante" else parse_hprim_net(raw)
    if len(reports) != 1:
        raise TransformError(f"one patient per message: the HPRIM file has {len(reports)} patients")
    report, warnings = _lab_report(ctx, reports[0], top, parts, params)
    seed, now, steps = hashlib.sha256(message).digest(), _now(params), Steps()
    pdf = _pdf(parts)
    data, info = _lab_to_cda(ctx, steps, report, f"{kind}_to_cda_n3", raw, params, seed, now,
                             pdf[0] if pdf else None, warnings)
    return _package(ctx, steps, top, [(info, data)], params, seed, now, pdf=pdf)


def hl7_oru_to_cda_xdm(ctx: Context, message: bytes, params: Mapping[str, Any]) -> TransformOutcome:
    top, parts = walk(message)
    found = _find(parts, "hl7_oru", flavour="lab3")
    if found is None:
        raise TransformError("no structured HL7 v2 ORU^R01 (LAB-3) in the message")
    raw = found[0].payload()
    report, warnings = _lab_report(ctx, read_lab_oru(parse_er7(raw)), top, parts, params)
    seed, now, steps = hashlib.sha256(message).digest(), _now(params), Steps()
    pdf = _pdf(parts)
    if pdf is None and report.pdf:      # the lab's PDF copy in an OBX ED: the copy, and attached as a mail part
        _complete_pdf(report.pdf[-1024:], "OBX-5 (the PDF)")
        pdf = (report.pdf, "compte-rendu.pdf")
    data, info = _lab_to_cda(ctx, steps, report, "oru_to_cda_n3", raw, params, seed, now,
                             pdf[0] if pdf else None, warnings)
    return _package(ctx, steps, top, [(info, data)], params, seed, now, pdf=pdf)


def cisis_hl7_to_xdm(ctx: Context, message: bytes, params: Mapping[str, Any]) -> TransformOutcome:
    top, parts = walk(message)
    found = _find(parts, "hl7_oru", "hl7_mdm", flavour="cisis")
    if found is None and _find(parts, "hl7_mdm", "hl7_oru", flavour="pdf") is not None:
        return pdf_to_cda_n1_xdm(ctx, message, params)       # an HL7 document feed carrying a PDF: a letter
    if found is None:
        raise TransformError("no CI-SIS HL7 v2 message carrying a CDA in the message")
    raw = found[0].payload()
    msg = parse_er7(raw)
    request = read_cisis(msg, read_patient(msg).ins)
    steps, now = Steps(), _now(params)
    docs = []
    for doc in request.documents:
        if doc.status == "D":
            raise TransformError(f"OBX-11 D (delete) at {doc.where}: a deletion cannot be relayed as an XDM")
        root = ctx.xml.parse(doc.cda, f"CDA in {doc.where}")
        validation = ctx.validator.validate(root)
        warnings = list(request.warnings) if not docs else []
        if doc.status == "C":
            warnings.append(f"{doc.where}: replacement (OBX-11 C); RPLC association not added to the XDM")
        if validation.startswith("invalid"):
            err = TransformError(f"CDA carried in {doc.where} does not validate: {validation}")
            err.validation = validation
            raise steps.fail("cisis_extract_cda", V, raw, err)
        steps.add("cisis_extract_cda", V, raw, doc.cda, validation, warnings)
        info = read_cda(root)
        _conform(ctx, steps, doc.cda, info, produced=False)
        docs.append((info, doc.cda))
    ack = build_ack(msg, now=now.astimezone(_tz(params)).strftime("%Y%m%d%H%M%S"))
    to = list(request.recipients) or None
    return _package(ctx, steps, top, docs, params, hashlib.sha256(message).digest(), now, pdf=_pdf(parts), to=to,
                    body=request.body, recipients=list(request.recipients), ack=ack)


# The PDF's base64 goes into the CDA as the sender wrote it, and the schema is checked on the document with this
# short stand-in for it: the <text> element's type (ED, mixed content) constrains no character of its content, and
# the text has been checked to be canonical base64 (`Part.mime_base64`: the base64 alphabet only), so the document
# sent is valid exactly when the one checked is. It spares parsing ~270 KB of base64 per 200 KB PDF.
_PDF_STAND_IN = b"JVBERi0xLjQK"          # base64 of "%PDF-1.4\n"
_PDF_MARK = "@@HUB-PDF-BASE64@@"          # where the CR-BIO's PDF copy goes: its last section, after any sender text


def pdf_to_cda_n1_xdm(ctx: Context, message: bytes, params: Mapping[str, Any]) -> TransformOutcome:
    """A PDF letter + its metadata, or an HL7 v2 MDM^T02 carrying the PDF. The step's input digest is the
    message's: the PDF and the metadata are both its input."""
    top, parts = walk(message)
    found = _find(parts, "pdf")
    mdm_meta: dict[str, str] = {}
    part = None
    if found is None:
        mdm = _find(parts, "hl7_mdm", "hl7_oru", flavour="pdf")
        if mdm is None:
            raise TransformError("no PDF attachment (nor an HL7 MDM^T02 carrying one) in the message")
        pdf_bytes, mdm_meta = read_mdm(parse_er7(mdm[0].payload()))
        pdf_name = (mdm[0].filename or "document").rsplit(".", 1)[0] + ".pdf"
        _complete_pdf(pdf_bytes[-1024:], "OBX-5 (the PDF)")
    else:
        part = found[0]
        pdf_name = part.filename or "document.pdf"
    tz, now = _tz(params), _now(params)
    meta = md.document_meta(_metadata(ctx, top, parts, params, mdm_meta),
                            doc_code=str(params.get("doc_code", "11490-0")), title=str(params.get("title", "")),
                            now=now_ts(tz, now))
    seed, steps = hashlib.sha256(message).digest(), Steps()
    steps.known(message, seed.hex())
    b64 = part.mime_base64() if part is not None else None
    if b64 is not None:       # the usual case: no decoding, the sender's base64 reused in the CDA and the mail
        pdf, pdf_lines, text = b64.prefix(4096), b64.lines, b64.text
        _complete_pdf(b64.suffix(1024), "PDF attachment")
    else:
        pdf = part.payload() if part is not None else pdf_bytes
        pdf_lines, text = None, [pybase64.b64encode(pdf)]
        if part is not None:
            _complete_pdf(pdf[-1024:], "PDF attachment")
    try:
        head, tail = n1_frame(meta, pdf, doc_id_root=f"{ctx.hub_oid}.1", doc_id_ext=seed.hex()[:32],
                              local_id_root=f"{ctx.hub_oid}.3", tz=tz, vs=ctx.value_sets)
        checked, validation, root = finish(head + _PDF_STAND_IN + tail, ctx.validator)
    except TransformError as exc:
        raise steps.fail("pdf_to_cda_n1", V, message, exc) from None
    data = b"".join([head, *text, tail])
    warnings = [] if meta.patient.qualified_ins else ["INS not qualified: X-MSS-INS will be N"]
    if meta.patient.ins and not meta.patient.birth_place_cog:
        warnings.append("INS without the birth place (COG code): birth place sent as nullFlavor UNK")
    steps.add("pdf_to_cda_n1", V, message, data, validation, warnings)
    info = read_cda(root)
    _conform(ctx, steps, data, info, produced=True, check=checked)
    return _package(ctx, steps, top, [(info, data)], params, seed, now,
                    pdf=(pdf if part is not None else pdf_bytes, pdf_name), pdf_lines=pdf_lines)


def cda_to_xdm(ctx: Context, message: bytes, params: Mapping[str, Any]) -> TransformOutcome:
    top, parts = walk(message)
    docs, steps = [], Steps()
    for part in parts:
        if _classify(part).kind != "cda":
            continue
        raw = part.payload()
        root = ctx.xml.parse(raw, f"CDA part {part.index}")
        validation = ctx.validator.validate(root)
        if validation.startswith("invalid"):
            err = TransformError(f"CDA in part {part.index} does not validate: {validation}")
            err.validation = validation
            raise steps.fail("cda_validate", V, raw, err)
        steps.add("cda_validate", V, raw, raw, validation)
        info = read_cda(root)
        _conform(ctx, steps, raw, info, produced=False)
        docs.append((info, raw))
    if not docs:
        raise TransformError("no CDA document in the message")
    patients = {(i.patient.ins, i.patient.family, i.patient.birth_date) for i, _ in docs}
    if len(patients) > 1:
        raise TransformError("one patient per message: the CDAs name different patients")
    return _package(ctx, steps, top, docs, params, hashlib.sha256(message).digest(), _now(params), pdf=_pdf(parts))


def mss_headers(ctx: Context, message: bytes, params: Mapping[str, Any]) -> TransformOutcome:
    """Add X-MSS-CODECDA / X-MSS-INS / X-MSS-NIL computed from the XDM already attached; body untouched."""
    top, parts = walk(message)
    found = _find(parts, "xdm")
    infos = []
    steps = Steps()
    if found is not None:
        content = read_xdm(found[0].payload(), max_entries=ctx.max_zip_entries,
                           max_expanded=ctx.max_zip_expanded, xml=ctx.xml)
        for doc in content.documents:
            root = ctx.xml.parse(doc.data, doc.path)
            steps.add("xdm_read_cda", V, doc.data, doc.data, ctx.validator.validate(root))
            infos.append(read_cda(root))
    out = replace_headers(message, mss.mss_headers(infos, ctx.nil))
    steps.add("mss_headers", V, message, out)
    p = infos[0].patient if infos else None
    return TransformOutcome(message=out, steps=steps.records, patient_ins=(p.ins or None) if p else None,
                            patient_ins_oid=(p.ins_oid or None) if p else None, doc_codes=[i.code for i in infos])


def replace_headers(message: bytes, headers: list[tuple[str, str]]) -> bytes:
    """Drop existing headers of those names (with folded lines) and put the new ones first."""
    names = {n.lower().encode() for n, _ in headers}
    end = message.find(b"\r\n\r\n")
    end = message.find(b"\n\n") if end < 0 else end
    head, rest = (message, b"") if end < 0 else (message[:end], message[end:])
    kept, skipping = [], False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() in names
        if not skipping:
            kept.append(line)
    new = b"".join(f"{n}: {v}\r\n".encode("utf-8") for n, v in headers)
    return new + b"".join(kept) + rest


# the chains whose output carries a CDA the GP's software files: without transform.schematron_dir their
# conformance is not checked, which the hub says loudly (hub.transform.registry.unchecked_chains)
CDA_CHAINS = frozenset({"hprim_to_cda_xdm", "hl7_oru_to_cda_xdm", "cisis_hl7_to_xdm", "pdf_to_cda_n1_xdm",
                        "cda_to_xdm"})

# the params each chain reads (docs/transform.md §2): a rule giving any other is refused by `hub rules check`
COMMON_PARAMS = frozenset({"now", "tz", "body", "metadata"})
PARAMS = {
    "hprim_to_cda_xdm": COMMON_PARAMS | {"chapter"},
    "hl7_oru_to_cda_xdm": COMMON_PARAMS | {"chapter"},
    "cisis_hl7_to_xdm": COMMON_PARAMS | {"doc_code", "title"},      # a PDF it carries goes to pdf_to_cda_n1_xdm
    "pdf_to_cda_n1_xdm": COMMON_PARAMS | {"doc_code", "title"},
    "cda_to_xdm": COMMON_PARAMS,
    "mss_headers": frozenset(),
}

CHAINS = {
    "hprim_to_cda_xdm": hprim_to_cda_xdm,
    "hl7_oru_to_cda_xdm": hl7_oru_to_cda_xdm,
    "cisis_hl7_to_xdm": cisis_hl7_to_xdm,
    "pdf_to_cda_n1_xdm": pdf_to_cda_n1_xdm,
    "cda_to_xdm": cda_to_xdm,
    "mss_headers": mss_headers,
}
