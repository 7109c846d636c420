"""Limits on the shape of a message, checked at the end of DATA before anything is stored: no line longer than the
998 characters RFC 5322 (2.1.1) allows, a bounded header section (size and number of fields). A message over them
gets a 5xx that says which limit and where, at once, instead of a 250 and then a refusal by every next hop (which
nobody would learn of: the failure notice carries the same line).

Input: the message as the protocol hands it over (CRLF line ends throughout, dot-stuffing undone).
Settings read: smtp.max_header_size, smtp.max_header_fields (passed in).
"""

from __future__ import annotations

import re

from hub.intake import replies

MAX_LINE = 998                       # characters, CRLF excluded (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6)
_WINDOW = (MAX_LINE + 2) // 2        # a longer line (with its CR) spans one whole aligned window without a LF
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")    # a field name and its colon (RFC 5322 3.6.8)


def long_line(data: bytes, limit: int = MAX_LINE) -> tuple[int, int] | None:
    """(line number, length) of the first line longer than `limit` characters, or None. One C-level `find` per
    window of ~500 bytes (a 100 KB message: ~200 of them), no copy of the data; a window holding no line feed is
    the only place looked at closely."""
    size = len(data)
    if size <= limit:
        return None
    find = data.find
    start = 0
    while start < size:
        if find(b"\n", start, start + _WINDOW) < 0:
            first = data.rfind(b"\n", 0, start) + 1
            end = find(b"\n", start)
            end = size if end < 0 else end
            length = end - first - (data[end - 1:end] == b"\r")
            if length > limit:
                return data.count(b"\n", 0, first) + 1, length
            start = end
        start += _WINDOW
    return None


def header_section(content: bytes, max_fields: int, max_size: int) -> tuple[int, int]:
    """(size in bytes, number of fields) of the header section, as a MIME parser reads it: up to the first empty
    line, or up to the first line that is neither a field nor a continuation (a message without an empty line).
    Counting stops once past `max_fields` fields or `max_size` bytes."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[:end + 2]
    fields = head.count(b"\r\n") + (not head.endswith(b"\r\n")) - head.count(b"\r\n ") - head.count(b"\r\n\t")
    if end >= 0 and fields <= max_fields:
        return len(head), fields
    pos = fields = 0                                   # the slow way, line by line: rare
    while pos < len(head) and fields <= max_fields and pos <= max_size:
        nl = head.find(b"\n", pos)
        nl = len(head) if nl < 0 else nl + 1
        if head[pos:pos + 1] not in (b" ", b"\t"):
            if not _FIELD.match(head, pos):
                break
            fields += 1
        pos = nl
    return pos, fields


def refusal(content: bytes, *, max_header_size: int, max_header_fields: int) -> str | None:
    """The 5xx reply for a message over a limit, or None."""
    found = long_line(content)
    if found is not None:
        return replies.LINE_TOO_LONG.format(line=found[0], length=found[1])
    size, fields = header_section(content, max_header_fields, max_header_size)
    if size > max_header_size:
        return replies.HEADER_TOO_BIG.format(size=size, limit=max_header_size)
    if fields > max_header_fields:
        return replies.TOO_MANY_FIELDS.format(limit=max_header_fields)
    return None
