"""MIME reading (fast walk over an RFC 5322 message) and writing (the outgoing MSSanté message).

Reading: a header block is split into fields here, with the stdlib feed parser's rules (`_fields`), and the fields
are stored in stdlib message objects, so header queries keep the `email` semantics without the cost of the feed
parser (top level: `policy.default`; part structure: `compat32`, ~10x cheaper to query). Multipart bodies are split
on their boundary with bytes searches; a part's body is a view into the message, not a copy. Bodies are decoded
lazily (base64 / quoted-printable). `Part.mime_base64` returns a base64 body in the usual MIME layout, without its
line breaks and without decoding it, when it is exactly the canonical encoding of its bytes, so a writer can reuse
it (and the body's own lines) instead of decoding and encoding again. Input is untrusted: limits on part count and
nesting, malformed structure is a ParseError.

Writing: `build_message` keeps the original routing headers, never the internal `X-Hub-*` ones (they carry patient
data); ASCII header values are written as they are, others as RFC 2047 base64 encoded-words. Bodies are base64 in
76-column CRLF lines (`_line_pieces`, 64 lines per call of pybase64's SIMD encoder, no big intermediate buffer), or lines the caller already
has (`Attachment.encoded`). The message is joined once. Reads no settings.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from typing import NamedTuple

import pybase64

from hub.errors import ParseError
from hub.transform.parse.text import decode_text

MAX_PARTS = 200
MAX_DEPTH = 8
LINE = 76                                             # base64 characters per line (RFC 2045)
_TEXT_BLOCK = struct.Struct(f"{LINE}s" * 64)         # 64 lines of base64 text
_MIME_BLOCK = struct.Struct(f"{LINE}s2x" * 64)       # 64 MIME lines: their text, without the CRLF
_DATA_BLOCK = LINE // 4 * 3 * 64                      # the bytes 64 lines encode
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")    # the stdlib feed parser's headerRE
# headers of the received message kept on a transformed one; `received` first of all (RFC 5321 4.4: trace fields,
# the hub's own included, are never removed: loop detection and the path a result took depend on them)
KEEP = ("received", "from", "to", "cc", "date", "message-id", "reply-to", "in-reply-to", "references", "sender",
        "disposition-notification-to", "return-receipt-to", "original-recipient", "x-mss-mes")


@dataclass(frozen=True)
class Part:
    index: int
    content_type: str
    filename: str
    cte: str
    raw: memoryview = field(repr=False)       # the encoded body: a read-only view into the message (no copy)
    headers: Message = field(repr=False)

    def payload(self) -> bytes:
        if self.cte == "base64":
            try:
                return binascii.a2b_base64(self.raw)
            except (binascii.Error, ValueError) as exc:
                raise ParseError(f"MIME part {self.index}: bad base64: {exc}") from None
        if self.cte == "quoted-printable":
            return binascii.a2b_qp(self.raw)
        return self.raw.tobytes()

    def head(self, n: int) -> bytes:
        """The first ~n decoded bytes, cheaply (for sniffing)."""
        if self.cte == "base64":
            enc = self.raw[: n * 4 // 3 + n // 38 + 8].tobytes().translate(None, b"\r\n\t ")
            enc = enc[: len(enc) // 4 * 4]
            try:
                return binascii.a2b_base64(enc)
            except (binascii.Error, ValueError):
                return b""
        if self.cte == "quoted-printable":
            return binascii.a2b_qp(self.raw[: n * 3])
        return self.raw[:n].tobytes()

    def mime_base64(self) -> Base64Body | None:
        """This body's base64, without decoding it, when it is laid out in 76-column CRLF lines and is canonical:
        `b64encode` of the bytes it decodes to (only the base64 alphabet, then at most two `=` of padding, the
        unused bits of a padded last quantum zero). Else None (decode with `payload()`)."""
        if self.cte != "base64":
            return None
        lines = _mime_lines(self.raw)
        if lines is None or not len(lines):
            return None
        text = _text_pieces(lines)
        return Base64Body(text, lines) if _canonical(text) else None


class Base64Body(NamedTuple):
    text: list[bytes]                # the base64 text, in pieces to join
    lines: memoryview                # the same text in MIME lines (76 characters, CRLF), but for a final CRLF

    def prefix(self, n: int) -> bytes:
        """The first n decoded bytes (fewer if the body is shorter)."""
        want = -(-n // 3) * 4
        text, got = [], 0
        for piece in self.text:
            text.append(piece)
            got += len(piece)
            if got >= want:
                break
        return binascii.a2b_base64(b"".join(text)[:want])[:n]

    def suffix(self, n: int) -> bytes:
        """The last n (or a few more) decoded bytes (canonical base64: every 4 characters from the end are whole)."""
        want = -(-n // 3) * 4 + 4
        text, got = [], 0
        for piece in reversed(self.text):
            text.append(piece)
            got += len(piece)
            if got >= want:
                break
        tail = b"".join(reversed(text))
        return binascii.a2b_base64(tail[len(tail) - min(want, len(tail)) // 4 * 4:])


def pdf_complete(tail: bytes) -> bool:
    """Whether a PDF's last bytes hold its end marker: `%%EOF` within the last 1024 bytes (where PDF readers look
    for it). A PDF cut in transit has none."""
    return b"%%EOF" in tail[-1024:]


def _canonical(pieces: list[bytes]) -> bool:
    """Whether base64 text in pieces is exactly what `b64encode` writes for the bytes it decodes to.
    pybase64's strict decode (SIMD: ~20 GB/s, a tenth of a `translate` pass) checks each piece holds only the
    alphabet, with padding only at the end of the last one (every other piece is a multiple of 76 = 19 x 4
    characters); then the last quantum's unused bits must be zero (decoded and encoded again)."""
    size = sum(map(len, pieces))
    if not size or size % 4 or len(pieces[-1]) < 4:
        return False
    if any(piece.endswith(b"=") for piece in pieces[:-1]):       # padding inside the text
        return False
    try:
        for piece in pieces:
            pybase64.b64decode(piece, validate=True)
    except binascii.Error:
        return False
    quantum = pieces[-1][-4:]
    return binascii.b2a_base64(binascii.a2b_base64(quantum), newline=False) == quantum


def _mime_lines(raw: memoryview) -> memoryview | None:
    """`raw` without a final CRLF when its CR and LF are where `_line_pieces` puts them: after every 76 characters
    but the last ones (the last CRLF belongs to the boundary delimiter in a multipart); else None."""
    raw = raw[:-2] if raw[-2:] == b"\r\n" else raw
    full, last = divmod(len(raw), LINE + 2)
    if last > LINE or (not last and full):
        return None
    edge = full * (LINE + 2)
    if raw[LINE:edge:LINE + 2] != b"\r" * full or raw[LINE + 1:edge:LINE + 2] != b"\n" * full:
        return None
    return raw


def _text_pieces(lines: memoryview) -> list[bytes]:
    """The base64 text of MIME lines laid out as `encode_lines` writes them, in pieces of 64 lines."""
    size = _MIME_BLOCK.size
    cut = len(lines) // size * size
    out = [b"".join(_MIME_BLOCK.unpack_from(lines, i)) for i in range(0, cut, size)]   # no bytecode per line
    out += [bytes(lines[i:i + LINE]) for i in range(cut, len(lines), LINE + 2)]
    return out


def _fields(head: bytes) -> list[tuple[str, str]]:
    """(name, value) of each field of a header block, split as the stdlib feed parser does: universal newlines,
    folded lines joined, stops at the first line that is neither a field nor a continuation; a leading `From ` line,
    continuation lines before any field and fields without a name are dropped. Values as `header_source_parse`."""
    lines = [line.decode("ascii", "surrogateescape") for line in (head + b"\r\n").splitlines(keepends=True)]
    out: list[tuple[str, str]] = []
    current: list[str] = []
    for n, line in enumerate(lines):
        if not _HEADER_LINE.match(line):
            break
        if line[0] in " \t":
            if current:
                current.append(line)
            continue
        if current:
            out.append(_source_parse(current))
            current = []
        if line.startswith("From "):
            if n == len(lines) - 1:
                break
            continue
        if line.find(":") > 0:
            current = [line]
    if current:
        out.append(_source_parse(current))
    return out


def _source_parse(lines: list[str]) -> tuple[str, str]:
    name, value = lines[0].split(":", 1)
    return name, (value.lstrip(" \t") + "".join(lines[1:])).rstrip("\r\n")


def _message(fields: list[tuple[str, str]], cls: type[Message], pol) -> Message:
    msg = cls(policy=pol)
    for name, value in fields:
        msg.set_raw(name, value)
    return msg


def _split(data: bytes, start: int, end: int) -> tuple[list[tuple[str, str]], int]:
    """Header fields of the entity data[start:end] and the offset of its body."""
    if data[start:start + 1] in (b"\r", b"\n"):
        while start < end and data[start] in (13, 10):
            start += 1
        return [], start
    m = _HEADER_END.search(data, start, end)
    return (_fields(data[start:m.start()]), m.end()) if m else (_fields(data[start:end]), end)


def _info(msg: Message) -> tuple[str, str, str, str]:
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
    fields, body = _split(data, 0, len(data))
    parts: list[Part] = []
    _walk(_message(fields, Message, policy.compat32), _Region(data, memoryview(data).toreadonly()), body, len(data),
          parts, 0)
    return _message(fields, EmailMessage, policy.default), parts


@dataclass(frozen=True)
class _Region:
    data: bytes
    view: memoryview


def _walk(headers: Message, msg: _Region, start: int, end: int, parts: list[Part], depth: int) -> None:
    """The entity whose body is msg.data[start:end]: a leaf part, or a multipart walked recursively."""
    ctype, boundary, filename, cte = _info(headers)
    if not boundary:
        if len(parts) >= MAX_PARTS:
            raise ParseError(f"MIME: more than {MAX_PARTS} parts")
        parts.append(Part(len(parts), ctype, filename, cte, msg.view[start:end], headers))
        return
    if depth >= MAX_DEPTH:
        raise ParseError(f"MIME: multipart nesting deeper than {MAX_DEPTH}")
    marks = _delimiters(msg.data, start, end, b"--" + boundary.encode("utf-8", "replace"))
    if not marks:
        raise ParseError(f"MIME: boundary {boundary!r} never occurs in the multipart body")
    for (_, sub_start, closing), (sub_end, _, _) in zip(marks, marks[1:]):
        if closing:
            break
        fields, body = _split(msg.data, sub_start, sub_end)
        _walk(_message(fields, Message, policy.compat32), msg, body, sub_end, parts, depth + 1)


def _delimiters(data: bytes, lo: int, hi: int, delim: bytes) -> list[tuple[int, int, bool]]:
    """In data[lo:hi], for each delimiter line: (start of the CRLF before it, end of the line, closing?). A delimiter
    starts a line: search for LF + delimiter (a longer needle is found faster), and at `lo`."""
    out = []
    pos = lo if data.startswith(delim, lo, hi) else _line_start(data, b"\n" + delim, lo, hi)
    while pos >= 0:
        start = pos - 2 if pos - 2 >= lo and data[pos - 2:pos] == b"\r\n" else max(pos - 1, lo)
        after = pos + len(delim)
        closing = data[after:min(after + 2, hi)] == b"--"
        eol = data.find(b"\n", after, hi)
        end = hi if eol < 0 else eol + 1
        out.append((start, end, closing))
        if closing:
            break
        pos = _line_start(data, b"\n" + delim, after, hi)
    return out


def _line_start(data: bytes, needle: bytes, lo: int, hi: int) -> int:
    found = data.find(needle, lo, hi)
    return found + 1 if found >= 0 else -1


_RAW_8BIT = re.compile("[\udc80-\udcff]")     # a byte >= 0x80 in a header, as the bytes parser keeps it


def header_text(headers: EmailMessage, names: Collection[str]) -> dict[str, str]:
    """Decoded text of the first field of each name (lower case) present, as `str(headers[name])` gives it for an
    unstructured field, whitespace runs collapsed. Plain ASCII values are taken as they are (the common case)."""
    out: dict[str, str] = {}
    for name, value in headers.raw_items():
        low = name.lower()
        if low not in names or low in out:
            continue
        if _RAW_8BIT.search(value):       # raw 8-bit bytes: UTF-8, else what old software writes (ISO-8859-1 /
            value = decode_text(value.encode("ascii", "surrogateescape"), f"header {name}")    # Windows-1252)
        elif not value.isascii() or "=?" in value:
            value = str(headers.policy.header_fetch_parse(name, value))
        out[low] = " ".join(value.split())
    return out


# ---------------------------------------------------------------- writing

def _line_pieces(data: bytes) -> list[bytes]:
    """base64 in CRLF-terminated 76-character lines, as pieces to join, 64 lines at a time: no big intermediate buffer, no object per line.
    pybase64 (SIMD) encodes 2.5-4x faster than binascii: the XDM of a 200 KB letter is ~280 KB to encode."""
    view, out = memoryview(data), []
    for start in range(0, len(data), _DATA_BLOCK):
        text = pybase64.b64encode(view[start:start + _DATA_BLOCK])
        lines = _TEXT_BLOCK.unpack(text) if len(text) == _TEXT_BLOCK.size else [
            text[i:i + LINE] for i in range(0, len(text), LINE)]
        out += (b"\r\n".join(lines), b"\r\n")
    return out


def _encoded_words(value: str, chunk: int = 39) -> str:
    """RFC 2047 'B' encoded-words of at most `chunk` UTF-8 bytes each (never splitting a character), folded."""
    data = value.encode("utf-8")
    words, start = [], 0
    while start < len(data):
        end = min(start + chunk, len(data))
        while end < len(data) and 0x80 <= data[end] < 0xC0:
            end -= 1
        words.append(f"=?utf-8?b?{binascii.b2a_base64(data[start:end], newline=False).decode('ascii')}?=")
        start = end
    return "\r\n ".join(words)


def _header(name: str, value: str) -> bytes:
    value = " ".join(value.split())
    if value.isascii():
        return f"{name}: {value}\r\n".encode("ascii")
    return f"{name}: {_encoded_words(value)}\r\n".encode("ascii")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    encoded: bytes | memoryview = field(default=b"", repr=False)    # `encode_lines(data)`, when already at hand
    #                                                    (its final CRLF may be missing)


def build_message(original: EmailMessage | None, *, subject: str, extra_headers: list[tuple[str, str]],
                  body_text: str, attachments: list[Attachment], to: list[str] | None = None) -> bytes:
    """multipart/mixed: text body + attachments, base64. `to` replaces To."""
    out = [_kept_headers(original, replace_to=to is not None)]
    if to is not None:
        out.append(_header("To", ", ".join(to)))
    out.append(_header("Subject", subject))
    out += [_header(name, value) for name, value in extra_headers]
    body = body_text.encode("utf-8")
    digest = hashlib.sha256(body + b"".join(a.data[:4096] for a in attachments)).hexdigest()
    boundary = f"=_hub_{digest[:32]}"
    out.append((f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
                f"This is a multi-part message in MIME format.\r\n"
                f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii"))
    out += _line_pieces(body)
    for att in attachments:
        safe = re.sub(r'[^A-Za-z0-9_.\-]', "_", att.filename) or "attachment"
        out.append((f'--{boundary}\r\nContent-Type: {att.content_type}; name="{safe}"\r\n'
                    f'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="{safe}"\r\n\r\n'
                    ).encode("ascii"))
        if att.encoded:
            out += (att.encoded, b"" if att.encoded[-2:] == b"\r\n" else b"\r\n")
        else:
            out += _line_pieces(att.data)
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


def _kept_headers(original: EmailMessage | None, *, replace_to: bool) -> bytes:
    if original is None:
        return b""
    out = []
    for name, value in original.raw_items():
        low = name.lower()
        if low in KEEP and not (replace_to and low == "to"):
            out.append(f"{name}: {str(value).strip()}\r\n".replace("\r\n", "\n").replace("\n", "\r\n"))
    return "".join(out).encode("utf-8", "replace")
