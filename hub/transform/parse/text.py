"""Text of untrusted documents: decoding, and what no step may record.

`decode_text(data, what)`: HPRIM and HL7 v2 bytes are UTF-8 when they decode strictly, else ISO-8859-1 (the HPRIM norm;
ISO-8859-15 when the HL7 message says so in MSH-18), read as Windows-1252 when they hold bytes 0x80-0x9F (C1 controls in
ISO-8859-1, never text: what Windows lab software writes for ’ – œ € …). A NUL byte (or any C0 or C1 control other than
tab, CR, LF, VT, FF, FS) never occurs in a lab text file: such a file is corrupt or binary, and is refused with a
ParseError naming its line (the document is never "sanitised" into something the laboratory did not send).

`clean(text)`: what a transform step records (warnings, validation results, error messages) goes to the audit trail,
a PostgreSQL text/jsonb column that cannot store NUL nor lone surrogates: they are replaced by U+FFFD, and the text is
capped. Pure; reads no settings.
"""

from __future__ import annotations

import re

from hub.errors import ParseError

_BAD = re.compile(r"[\x00-\x08\x0e-\x1b\x1d-\x1f\ud800-\udfff\ufffe\uffff]")
_C1 = re.compile(r"[\x80-\x9f]")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_LINES = re.compile(r"\r\n|\r|\n")
MAX_RECORDED = 2000


def decode_text(data: bytes, what: str = "document", declared: str = "") -> str:
    """`declared`: the character set the sender names (HL7 MSH-18), used when the bytes are not UTF-8: ISO-8859-15
    (`8859/15`: œ, Œ, €, Š, Ž, Ÿ where ISO-8859-1 has ½, ¼, ¤...) is read as such, never as ISO-8859-1."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("iso-8859-15" if declared == "iso-8859-15" else "iso-8859-1")
        if _C1.search(text) and declared != "iso-8859-15":
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError:      # 0x81, 0x8D, 0x8F, 0x90, 0x9D: no character in either
                pass
    bad = _BAD.search(text) or _C1.search(text)
    if bad is not None:
        line = len(_LINES.split(text[: bad.start()]))
        raise ParseError(f"{what}: control character U+{ord(bad.group()):04X} in the text (corrupted or binary "
                         "content)", where=f"line {line}")
    return text


def clean(text: str, limit: int = MAX_RECORDED) -> str:
    """Text safe to record in the audit trail (no NUL, no lone surrogate), at most `limit` characters."""
    text = str(text)
    if _UNSTORABLE.search(text):
        text = _UNSTORABLE.sub("\ufffd", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
