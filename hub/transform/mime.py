"""MIME reading (fast walk over an RFC 5322 message) and writing (the outgoing MSSanté message).

Reading: headers are parsed with the stdlib (`email`, policy=default); multipart bodies are split on their boundary
with bytes searches instead of the stdlib feed parser, which costs milliseconds on a 300 KB attachment. Part bodies
are decoded lazily (base64 / quoted-printable). Input is untrusted: limits on part count and nesting, malformed
structure is a ParseError. Writing: `build_message` keeps the original routing headers, never the internal
`X-Hub-*` ones (they carry patient data). Reads no settings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from hub.errors import ParseError

MAX_PARTS = 200
MAX_DEPTH = 8
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_PARSER = BytesHeaderParser(policy=policy.default)     # the top-level headers, handed to the chains
_FAST = BytesHeaderParser(policy=policy.compat32)      # part structure: string headers, ~10x cheaper to query
KEEP = ("from", "to", "cc", "date", "message-id", "reply-to", "in-reply-to", "references", "sender",
        "disposition-notification-to", "return-receipt-to", "original-recipient", "x-mss-mes")


@dataclass(frozen=True)
class Part:
    index: int
    content_type: str
    filename: str
    cte: str
    raw: bytes = field(repr=False)
    headers: EmailMessage = field(repr=False)

    def payload(self) -> bytes:
        if self.cte == "base64":
            try:
                return binascii.a2b_base64(self.raw)
            except (binascii.Error, ValueError) as exc:
                raise ParseError(f"MIME part {self.index}: bad base64: {exc}") from None
        if self.cte == "quoted-printable":
            return binascii.a2b_qp(self.raw)
        return self.raw

    def head(self, n: int) -> bytes:
        """The first ~n decoded bytes, cheaply (for sniffing)."""
        if self.cte == "base64":
            enc = self.raw[: n * 4 // 3 + n // 38 + 8].translate(None, b"\r\n\t ")
            enc = enc[: len(enc) // 4 * 4]
            try:
                return binascii.a2b_base64(enc)
            except (binascii.Error, ValueError):
                return b""
        if self.cte == "quoted-printable":
            return binascii.a2b_qp(self.raw[: n * 3])
        return self.raw[:n]


def _split(data: bytes, parser: BytesHeaderParser = _FAST) -> tuple[EmailMessage, bytes]:
    m = _HEADER_END.search(data)
    head, body = (data[:m.start()], data[m.end():]) if m else (data, b"")
    if data[:1] in (b"\r", b"\n"):
        head, body = b"", data.lstrip(b"\r\n")
    try:
        return parser.parsebytes(head + b"\r\n\r\n"), body
    except (ValueError, TypeError, IndexError) as exc:
        raise ParseError(f"MIME: unreadable header block: {exc}") from None


def _info(msg: EmailMessage) -> tuple[str, str, str, str]:
    try:
        ctype = msg.get_content_type()
        boundary = msg.get_boundary() or "" if ctype.startswith("multipart/") else ""
        filename = msg.get_filename() or msg.get_param("name", "", header="content-type") or ""
        cte = str(msg.get("content-transfer-encoding", "")).strip().lower()
    except (ValueError, TypeError, IndexError, AttributeError, LookupError) as exc:
        raise ParseError(f"MIME: unreadable part header: {exc}") from None
    if not isinstance(filename, str):     # compat32: RFC 2231 tuple
        filename = str(filename[2]) if isinstance(filename, tuple) and len(filename) == 3 else str(filename)
    return ctype, boundary, filename.strip(), cte


def walk(message: bytes) -> tuple[EmailMessage, list[Part]]:
    """Top-level headers and every leaf part (depth first). A non-multipart message is one part."""
    if not isinstance(message, (bytes, bytearray)):
        raise ParseError("MIME: expected bytes")
    data = bytes(message)
    structure, body = _split(data)
    parts: list[Part] = []
    _walk(structure, body, parts, 0)
    top, _ = _split(data[:len(data) - len(body)], _PARSER)
    return top, parts


def _walk(headers: EmailMessage, body: bytes, parts: list[Part], depth: int) -> None:
    ctype, boundary, filename, cte = _info(headers)
    if not boundary:
        if len(parts) >= MAX_PARTS:
            raise ParseError(f"MIME: more than {MAX_PARTS} parts")
        parts.append(Part(len(parts), ctype, filename, cte, body, headers))
        return
    if depth >= MAX_DEPTH:
        raise ParseError(f"MIME: multipart nesting deeper than {MAX_DEPTH}")
    marks = _delimiters(body, b"--" + boundary.encode("utf-8", "replace"))
    if not marks:
        raise ParseError(f"MIME: boundary {boundary!r} never occurs in the multipart body")
    for (_, end, closing), (start, _, _) in zip(marks, marks[1:]):
        if closing:
            break
        sub_headers, sub_body = _split(body[end:start])
        _walk(sub_headers, sub_body, parts, depth + 1)


def _delimiters(body: bytes, delim: bytes) -> list[tuple[int, int, bool]]:
    """(start of the CRLF before the delimiter, end of the delimiter line, closing?) for each delimiter line."""
    out = []
    pos = body.find(delim)
    while pos >= 0:
        if pos == 0 or body[pos - 1:pos] == b"\n":
            start = pos - 2 if body[pos - 2:pos] == b"\r\n" else max(pos - 1, 0)
            after = pos + len(delim)
            closing = body[after:after + 2] == b"--"
            eol = body.find(b"\n", after)
            end = len(body) if eol < 0 else eol + 1
            out.append((start, end, closing))
            if closing:
                break
        pos = body.find(delim, pos + len(delim))
    return out


# ---------------------------------------------------------------- writing

def _b64(data: bytes) -> bytes:
    """base64 in CRLF-terminated 76-character lines (much faster than base64.encodebytes)."""
    enc = base64.b64encode(data)
    n = len(enc)
    lines = map(enc.__getitem__, map(slice, range(0, n, 76), range(76, n + 76, 76)))   # no bytecode per line
    return b"\r\n".join(lines) + b"\r\n" if n else b""


def _header(name: str, value: str) -> bytes:
    value = " ".join(value.split())
    if value.isascii():
        return f"{name}: {value}\r\n".encode("ascii")
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}\r\n".encode("ascii")


def build_message(original: EmailMessage | None, *, subject: str, extra_headers: list[tuple[str, str]],
                  body_text: str, attachments: list[tuple[str, str, bytes]], to: list[str] | None = None) -> bytes:
    """multipart/mixed: text body + attachments (filename, content type, bytes), base64. `to` replaces To."""
    out = bytearray()
    if original is not None:
        for name, value in original.raw_items():
            low = name.lower()
            if low in KEEP and not (to is not None and low == "to"):
                out += f"{name}: {str(value).strip()}\r\n".replace("\r\n", "\n").replace("\n", "\r\n").encode(
                    "utf-8", "replace")
    if to is not None:
        out += _header("To", ", ".join(to))
    out += _header("Subject", subject)
    for name, value in extra_headers:
        out += _header(name, value)
    digest = hashlib.sha256(body_text.encode("utf-8") + b"".join(a[2][:4096] for a in attachments)).hexdigest()
    boundary = f"=_hub_{digest[:32]}"
    out += (f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            f"This is a multi-part message in MIME format.\r\n").encode("ascii")
    out += (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii") + _b64(body_text.encode("utf-8"))
    for filename, ctype, data in attachments:
        safe = re.sub(r'[^A-Za-z0-9_.\-]', "_", filename) or "attachment"
        out += (f'--{boundary}\r\nContent-Type: {ctype}; name="{safe}"\r\nContent-Transfer-Encoding: base64\r\n'
                f'Content-Disposition: attachment; filename="{safe}"\r\n\r\n').encode("ascii") + _b64(data)
    out += f"--{boundary}--\r\n".encode("ascii")
    return bytes(out)
