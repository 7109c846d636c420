"""Date and number helpers shared by the parsers and builders (pure, no settings).

`norm_ts` checks an HL7/HPRIM timestamp `YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]` and returns it without the
fraction; `cda_ts` adds the time zone the CDA requires (`YYYYMMDDHHMMSS+ZZZZ`) using the zone the caller passes
(`Europe/Paris` by default in the chains). Invalid values raise ParseError with the caller's `where`.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone, tzinfo

from hub.errors import ParseError

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_DECIMAL = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)$")
_RANGE = re.compile(r"^\s*([+-]?\d+(?:[.,]\d+)?)\s*(?:-|à|a|;|\.\.)\s*([+-]?\d+(?:[.,]\d+)?)\s*$")
_BOUND = re.compile(r"^\s*([<>])\s*=?\s*([+-]?\d+(?:[.,]\d+)?)\s*$")


def norm_ts(value: str, where: str, *, min_len: int = 8) -> str:
    """Validate a timestamp; return 'YYYYMMDD[HHMM[SS]][+ZZZZ]' (no fraction). Empty stays empty."""
    value = value.strip()
    if not value:
        return ""
    m = _TS.match(value)
    if not m:
        raise ParseError(f"invalid date/time {value!r}", where=where)
    parts = [p for p in m.groups()[:6] if p is not None]
    digits = "".join(parts)
    if len(digits) < min_len:
        raise ParseError(f"date/time {value!r} is not precise enough", where=where)
    try:
        datetime(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, int(parts[2]) if len(parts) > 2 else 1,
                 int(parts[3]) if len(parts) > 3 else 0, int(parts[4]) if len(parts) > 4 else 0,
                 int(parts[5]) if len(parts) > 5 else 0)
    except ValueError:
        raise ParseError(f"invalid date/time {value!r}", where=where) from None
    tz = m.group(7) or ""
    if tz and (int(tz[1:3]) > 14 or int(tz[3:]) > 59):
        raise ParseError(f"invalid time zone in {value!r}", where=where)
    return digits + tz


def fr_date(value: str, where: str) -> str:
    """'dd/mm/yyyy' or 'yyyy-mm-dd' (HPRIM Net) -> 'YYYYMMDD'."""
    value = value.strip()
    m = re.match(r"^(\d{2})/(\d{2})/(\d{4})$", value)
    if m:
        return norm_ts(m.group(3) + m.group(2) + m.group(1), where)
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})$", value)
    if m:
        return norm_ts("".join(m.groups()), where)
    raise ParseError(f"invalid date {value!r} (expected dd/mm/yyyy)", where=where)


def cda_ts(value: str, tz: tzinfo) -> str:
    """Timestamp for CDA: a date alone stays a date; a time gets seconds and the zone offset when missing."""
    if not value or len(value) <= 8:
        return value
    if value[-5] in "+-":
        return value
    digits = value.ljust(14, "0")[:14]
    local = _digits_time(digits) or datetime.strptime(digits, "%Y%m%d%H%M%S")
    return digits + local.replace(tzinfo=tz).strftime("%z")


def _digits_time(digits: str) -> datetime | None:
    """datetime.strptime(digits, "%Y%m%d%H%M%S") for 14 plain digits (cheaper), else None: strptime decides."""
    if not (digits.isascii() and digits.isdigit()):
        return None
    try:
        return datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]), int(digits[10:12]),
                        int(digits[12:14]))
    except ValueError:
        return None


def now_ts(tz: tzinfo, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(tz).strftime("%Y%m%d%H%M%S%z")


def is_decimal(value: str) -> bool:
    return bool(_DECIMAL.match(value.strip()))


def decimal(value: str) -> str:
    """'5,40' -> '5.40'; '.5' -> '0.5' (the PQ value form)."""
    v = value.strip().replace(",", ".")
    if v.startswith("."):
        v = "0" + v
    elif v[:2] in ("-.", "+."):
        v = v[0] + "0" + v[1:]
    return v[:-1] if v.endswith(".") else v


def split_range(text: str) -> tuple[str, str]:
    """'4.10 - 5.90' -> ('4.10', '5.90'); '< 5' -> ('', '5'); '> 3' -> ('3', ''); else ('', '')."""
    text = text.strip().strip("()[]").strip()
    m = _RANGE.match(text)
    if m:
        return decimal(m.group(1)), decimal(m.group(2))
    m = _BOUND.match(text)
    if m:
        return ("", decimal(m.group(2))) if m.group(1) == "<" else (decimal(m.group(2)), "")
    return "", ""


def decode_text(data: bytes) -> str:
    """HPRIM and HL7 bytes: UTF-8 when it decodes strictly, else ISO-8859-1 (the HPRIM norm). Never fails."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")
