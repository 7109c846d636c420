"""Detection: what a message carries, cheaply (no full parse), for the rules engine and the chains.

Walks the MIME parts (`hub.transform.parse.mime.walk`) and sniffs the first bytes of each leaf: IHE_XDM zip, CDA (document
type code and level from a regex over the header), HL7 v2 (ORU / MDM; CI-SIS "CDA in HL7v2" flavour when an ED OBX
carries a base64 document or MSH-21 names CISIS_CDA_HL7), HPRIM Santé (H record + delimiters), HPRIM Net
(****LAB**** / ****FIN**** markers), PDF. Untrusted input; a MIME structure it cannot walk is a ParseError.
Reads no settings.
"""

from __future__ import annotations

import re
import zipfile
import io
from dataclasses import dataclass

from hub.transform.parse.mime import Part, walk

KINDS = ("xdm", "cda", "hl7_oru", "hl7_mdm", "hprim_sante", "hprim_net", "pdf", "json", "other")
_PRIORITY = {k: n for n, k in enumerate(("xdm", "cda", "hl7_mdm", "hl7_oru", "hprim_sante", "hprim_net", "pdf",
                                         "json", "other"))}
_CDA_CODE = re.compile(rb"<(?:\w+:)?ClinicalDocument\b.*?<(?:\w+:)?code\b[^>]*?\scode\s*=\s*[\"']([^\"']+)", re.S)
_HPRIM_H = re.compile(rb"^H([^A-Za-z0-9\s])([^A-Za-z0-9\s])([^A-Za-z0-9\s])([^A-Za-z0-9\s])([^A-Za-z0-9\s])")
SNIFF = 65536
PEEK = 1024
_BLANK = b"\xef\xbb\xbf \t\r\n\x0b"


@dataclass(frozen=True)
class Detected:
    kind: str
    doc_code: str = ""
    level: int = 0           # CDA level 1 / 3 when known
    part_index: int = -1
    filename: str = ""
    flavour: str = ""        # HL7: "cisis" (CDA carried in OBX-5 ED) or "lab3" (one OBX per analyte)


@dataclass(frozen=True)
class ContentInfo:
    kind: str
    doc_code: str = ""
    flavour: str = ""


@dataclass(frozen=True)
class Detection:
    primary: Detected
    parts: tuple[Detected, ...]

    @property
    def kind(self) -> str:
        return self.primary.kind

    @property
    def doc_code(self) -> str:
        return self.primary.doc_code

    @property
    def summary(self) -> ContentInfo:
        return ContentInfo(self.primary.kind, self.primary.doc_code, self.primary.flavour)

    def first(self, kind: str) -> Detected | None:
        return next((d for d in self.parts if d.kind == kind), None)


def _structured_obx(fs: bytes) -> re.Pattern:
    """An OBX whose value type is not ED (NM, ST, CE, SN, TX...): a result, not a carried document."""
    f = re.escape(fs)
    return re.compile(rb"(?:^|[\r\n])OBX" + f + rb"[^\r\n" + f + rb"]*" + f + rb"(?!ED" + f + rb")[A-Z]{2,3}" + f)


def _hl7(head: bytes, whole: bytes | None) -> tuple[str, str, str]:
    text = head.lstrip(b"\x0b")
    fs = text[3:4]
    first = re.split(rb"\r|\n", text, maxsplit=1)[0].split(fs)
    mtype = first[8].split(text[4:5])[0] if len(first) > 8 else b""
    kind = "hl7_mdm" if mtype == b"MDM" else "hl7_oru" if mtype == b"ORU" else "other"
    data = whole if whole is not None else head
    cisis = b"CISIS_CDA_HL7" in first[20] if len(first) > 20 else False
    ed = re.search(rb"(?:^|[\r\n])OBX" + re.escape(fs) + rb"[^\r\n]*?" + re.escape(fs) + rb"ED" + re.escape(fs)
                   + rb"([^\r\n" + re.escape(fs) + rb"]*)", data)
    cs = re.escape(text[4:5])
    pdf = None
    if ed:
        rest = re.search(rb"[\r\n]", data[ed.end():])
        line = data[ed.start():ed.end() + (rest.start() if rest else len(data))]
        pdf = re.search(rb"(?i)" + cs + rb"(?:application|AP)?" + cs + rb"pdf" + cs + rb"base64" + cs, line)
    if ed and pdf and kind == "hl7_oru" and not cisis and _structured_obx(fs).search(data):
        return kind, "11502-2", "lab3"      # LAB-3 results with the lab's PDF copy of the report in an OBX ED
    if ed and pdf:
        code = ed.group(1).split(text[4:5])[0].decode("latin-1")
        return kind, code, "pdf"            # an MDM^T02 / ORU carrying a PDF: the PDF-letter chain's input
    if ed or cisis:
        code = ed.group(1).split(text[4:5])[0].decode("latin-1") if ed else ""
        return kind, code, "cisis"
    if kind == "hl7_mdm":
        txa = re.search(rb"(?:^|[\r\n])TXA" + re.escape(fs) + rb"[^" + re.escape(fs) + rb"]*" + re.escape(fs)
                        + rb"([^\r\n" + re.escape(fs) + rb"]*)", data)
        return kind, txa.group(1).split(text[4:5])[0].decode("latin-1") if txa else "", ""
    return kind, "11502-2" if kind == "hl7_oru" else "", "lab3"


def classify(part: Part) -> Detected:
    name = part.filename
    ctype = part.content_type
    base = dict(part_index=part.index, filename=name)
    # signatures first, on a short head: a 300 KB PDF is recognised without decoding 64 KB of it
    stripped = part.head(PEEK).lstrip(_BLANK)
    if not stripped.startswith((b"PK\x03\x04", b"%PDF-")):
        head = part.head(SNIFF)
        stripped = head.lstrip(_BLANK)
    if stripped.startswith(b"PK\x03\x04"):
        if name.upper() == "IHE_XDM.ZIP":
            return Detected("xdm", **base)
        try:
            names = zipfile.ZipFile(io.BytesIO(part.payload())).namelist()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
            names = []
        return Detected("xdm" if any(n.upper().startswith("IHE_XDM/") for n in names) else "other", **base)
    if stripped.startswith(b"%PDF-"):
        return Detected("pdf", **base)
    if stripped.startswith(b"MSH") and len(stripped) > 8:
        whole = part.payload() if len(head) >= SNIFF else None
        kind, code, flavour = _hl7(stripped, whole)
        return Detected(kind, code, 0, flavour=flavour, **base)
    if stripped.startswith(b"<"):
        m = _CDA_CODE.search(head)
        if m and b"urn:hl7-org:v3" in head:
            whole = part.payload() if len(head) >= SNIFF else head
            level = 1 if b"nonXMLBody" in whole else 3 if b"structuredBody" in whole else 0
            return Detected("cda", m.group(1).decode("ascii", "replace"), level, **base)
        return Detected("other", **base)
    if _HPRIM_H.match(stripped):
        return Detected("hprim_sante", **base)
    if b"****LAB****" in head or b"****FIN****" in head:
        return Detected("hprim_net", **base)
    if ctype == "application/json" or name.lower().endswith(".json"):
        return Detected("json", **base)
    return Detected("other", **base)


def detect(message: bytes) -> Detection:
    """Classify every leaf part; the primary one is the most specific (xdm > cda > hl7 > hprim > pdf)."""
    _, parts = walk(message)
    found = tuple(classify(p) for p in parts)
    primary = min(found, key=lambda d: (_PRIORITY.get(d.kind, 99), d.part_index)) if found else Detected("other")
    return Detection(primary, found)


def content_info(message: bytes) -> ContentInfo:
    return detect(message).summary
