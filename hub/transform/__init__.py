"""Detection and pure transforms: HPRIM Santé / HPRIM Net / HL7 v2 / CDA R2 / IHE XDM / MSSanté headers.

Public interface (everything else is internal):

    detect(message: bytes) -> Detection            what a message carries (cheap; for the rules engine)
    content_info(message: bytes) -> ContentInfo    (kind, doc_code, flavour) only
    build_registry(settings: TransformSection, nil: str) -> Registry
    Registry.names() -> frozenset[str]
    Registry.apply(name, message: bytes, params: dict, account=None) -> TransformOutcome

Layout, by role: `parse/` (input parsers: MIME, detection, HPRIM, HL7 v2, CI-SIS, MDM, CDA header, metadata, text),
`terminology/` (LOINC, units, value-set labels, dates), `build/` (document builders: CDA N1 / CR-BIO N3, the PDF
copy, XDM, MSSanté mail), `validate/` (safe XML, CDA schema, ANS schematrons); `chains.py` is the one place that
composes them, `steps.py` holds what the chains share (context, step records, outcome), `senders.py` the sender
profiles and `registry.py` names the chains. `cli.py`: `hub transform check`.

Errors: hub.errors.ParseError (malformed input, with `where`), hub.errors.TransformError (no valid document;
`.steps`, `.validation`). Settings read: the `[transform]` section, passed to `build_registry`. See docs/transform.md.
"""

from hub.transform.parse.detect import ContentInfo, Detected, Detection, content_info, detect
from hub.transform.registry import Registry, StepRecord, TransformOutcome, build_registry

__all__ = ["ContentInfo", "Detected", "Detection", "Registry", "StepRecord", "TransformOutcome", "build_registry",
           "content_info", "detect"]
