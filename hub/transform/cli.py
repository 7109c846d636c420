"""`hub transform check FILE [--chain C] [--account A] [--metadata META.json]`: what an operator runs before switching
a new laboratory or hospital on. Detection, chain, CDA schema and ANS schematrons on a sample file, with a readable
report; exit 0 when every document passes, 1 when a document fails (schema or schematron), 2 for a file that cannot
be used (missing, unreadable, not recognised, malformed: the reason with its line / segment and field).

FILE is a whole mail (`.eml`) or a bare document (HPRIM, HL7 v2, PDF, CDA, IHE_XDM.zip), which is then wrapped in a
mail as an attachment. Settings read: the `[transform]` section (schematron_dir, cda_schema, senders, loinc_map...).
Nothing is sent, nothing is written to the database.
"""

from __future__ import annotations

import base64
import io
import sys
import zipfile
from dataclasses import replace
from email import message_from_bytes, policy
from pathlib import Path

from hub.errors import ConfigError, InputError, ParseError, TransformError

DEFAULT_CHAIN = {"hprim_sante": "hprim_to_cda_xdm", "hprim_net": "hprim_to_cda_xdm", "cda": "cda_to_xdm",
                 "xdm": "mss_headers", "pdf": "pdf_to_cda_n1_xdm"}
_TYPES = {"pdf": "application/pdf", "cda": "text/xml", "xdm": "application/zip", "json": "application/json"}


def register(subparsers) -> None:
    p = subparsers.add_parser("transform", help="transformations: check a sample file against the ANS rules")
    sub = p.add_subparsers(dest="transform_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="detect, transform and validate (CDA schema + ANS schematrons) a sample file")
    c.add_argument("file", help="a mail (.eml) or a bare document: HPRIM, HL7 v2, PDF, CDA, IHE_XDM.zip")
    c.add_argument("--chain", help="transform chain (default: chosen from what the file carries)")
    c.add_argument("--account", help="the sending account (its sender profile applies)")
    c.add_argument("--metadata", help="a JSON metadata file sent with the document (PDF letters)")
    c.add_argument("--out", metavar="DIR", help="write what the GP's software would receive into DIR: the mail "
                   "(message.eml), each CDA (document-N.xml) and the IHE_XDM.zip; DIR is created, files in it are "
                   "replaced")
    c.set_defaults(run=cmd_check, sync=True)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def as_message(data: bytes, name: str, metadata: bytes | None = None) -> bytes:
    """A bare document becomes the attachment of a minimal mail; a mail is used as it is."""
    head = data[:4096]
    if b"\n\n" in head.replace(b"\r\n", b"\n") and head[:1].isalpha() and b":" in head.split(b"\n", 1)[0] \
            and not head.startswith((b"H|", b"MSH", b"<")):
        msg = message_from_bytes(data, policy=policy.default)
        if msg.keys():
            return data if metadata is None else _attach(data, metadata)
    b = "hub-check-boundary"
    parts = [(data, "application/octet-stream", Path(name).name or "document")]
    if metadata is not None:
        parts.append((metadata, "application/json", "metadata.json"))
    out = (f"From: check@hub.invalid\r\nTo: check@hub.invalid\r\nSubject: check\r\nMessage-ID: <check@hub.invalid>\r\n"
           f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{b}"\r\n\r\n').encode()
    for payload, ctype, filename in parts:
        out += (f'--{b}\r\nContent-Type: {ctype}; name="{filename}"\r\nContent-Transfer-Encoding: base64\r\n'
                f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n').encode()
        out += base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return out + f"--{b}--\r\n".encode()


def _attach(message: bytes, metadata: bytes) -> bytes:
    msg = message_from_bytes(message, policy=policy.default)
    if not msg.is_multipart():
        raise InputError("--metadata needs a multipart mail (or a bare document)")
    msg.add_attachment(metadata, maintype="application", subtype="json", filename="metadata.json")
    return msg.as_bytes()


def _chain_for(detection) -> str:
    d = detection.primary
    if d.kind in ("hl7_oru", "hl7_mdm"):
        return {"cisis": "cisis_hl7_to_xdm", "pdf": "pdf_to_cda_n1_xdm"}.get(d.flavour, "hl7_oru_to_cda_xdm")
    chain = DEFAULT_CHAIN.get(d.kind)
    if chain is None:
        raise InputError(f"the file carries nothing the hub transforms (detected: {d.kind}); "
                         "expected HPRIM, HL7 v2, a PDF, a CDA or an IHE_XDM.zip")
    return chain


def _write_out(directory: Path, message: bytes, out) -> None:
    """The produced mail and what it carries, for reading before a sender is switched on."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        files = {"message.eml": message}
        msg = message_from_bytes(message, policy=policy.default)
        for part in msg.iter_attachments():
            if part.get_filename() == "IHE_XDM.zip":
                files["IHE_XDM.zip"] = part.get_content()
        files.update((f"document-{n}.xml", cda) for n, cda in enumerate(_cdas(message), 1))
        for name, data in files.items():
            (directory / name).write_bytes(data)
    except OSError as exc:
        raise InputError(f"--out {directory}: cannot write: {exc.strerror}") from None
    print(f"written to {directory}: {', '.join(files)}", file=out)


def _cdas(message: bytes) -> list[bytes]:
    msg = message_from_bytes(message, policy=policy.default)
    for part in msg.iter_attachments():
        if part.get_filename() == "IHE_XDM.zip":
            z = zipfile.ZipFile(io.BytesIO(part.get_content()))
            return [z.read(n) for n in sorted(z.namelist()) if n.upper().endswith(".XML") and "/DOC" in n.upper()]
    return []


def cmd_check(args, ctx) -> int:
    from lxml import etree

    from hub.transform import build_registry, detect

    data = _read(args.file, "file")
    metadata = _read(args.metadata, "metadata file") if args.metadata else None
    message = as_message(data, args.file, metadata)
    out = sys.stdout
    try:
        detection = detect(message)
    except ParseError as exc:
        raise InputError(f"{args.file}: {exc}") from None
    s = ctx.settings.transform
    if not s.schematron_dir:
        print("note: [transform] schematron_dir is not set: the ANS schematrons are not run", file=out)
    registry = build_registry(replace(s, on_nonconformant="warn"), ctx.settings.hub.nil)
    chain = args.chain or _chain_for(detection)
    if chain not in registry.names():
        raise ConfigError(f"--chain {chain}: unknown chain (known: {', '.join(sorted(registry.names()))})")
    if args.account and args.account not in registry.context.senders._profiles:
        print(f"note: no sender profile for account {args.account!r} in transform.senders", file=out)
    d = detection.primary
    print(f"file: {args.file}", file=out)
    print(f"detected: {d.kind}" + (f" ({d.flavour})" if d.flavour else "") + (f", document {d.doc_code}"
                                                                              if d.doc_code else ""), file=out)
    print(f"chain: {chain}" + (f" (account {args.account})" if args.account else ""), file=out)
    try:
        outcome = registry.apply(chain, message, {}, account=args.account)
    except ParseError as exc:
        raise InputError(f"{args.file}: {exc}") from None
    except TransformError as exc:
        print(f"FAILED: {exc}", file=out)
        for step in getattr(exc, "steps", []) or []:
            print(f"  step {step.name}: {step.validation}", file=out)
        return 1
    for step in outcome.steps:
        print(f"  step {step.name}: {step.validation}", file=out)
        for w in step.warnings:
            if not w.startswith("sent although"):      # nothing is sent by a check
                print(f"    warning: {w}", file=out)
    failed = False
    if args.out:
        _write_out(Path(args.out), outcome.message, out)
    for n, cda in enumerate(_cdas(outcome.message), 1):
        root = etree.fromstring(cda)
        templates = [t.get("root") or "" for t in root.findall("{urn:hl7-org:v3}templateId")]
        code = root.find("{urn:hl7-org:v3}code")
        xsd = registry.context.validator.validate(root)
        print(f"document {n}: code {code.get('code') if code is not None else '?'}, CDA schema: {xsd}", file=out)
        failed |= xsd.startswith("invalid")
        if not registry.context.schematrons.enabled:
            continue
        result = registry.context.schematrons.check(cda, templates, code.get("code") if code is not None else "")
        print(f"  ANS schematrons ({', '.join(Path(c).name for c in result.checked)}): "
              + ("0 failed assertions" if result.ok else f"{len(result.failures)} failed assertion(s)"), file=out)
        for f in result.failures:
            print(f"    [{f.schematron}] {f.rule} at {f.location}\n      {f.message}", file=out)
        failed |= not result.ok
    if failed:
        print("result: NOT conformant", file=out)
        return 1
    unchecked = [name for name, on in (("[transform] cda_schema (the CDA schema)", bool(s.cda_schema)),
                                       ("[transform] schematron_dir (the ANS rules)",
                                        registry.context.schematrons.enabled)) if not on]
    if unchecked:       # nothing failed, but nothing proved the document conformant either: never a green light
        print(f"result: NOT proven conformant: not checked, as {' and '.join(unchecked)} {'are' if len(unchecked) > 1 else 'is'} not set",
              file=out)
        return 1
    print("result: conformant", file=out)
    return 0
