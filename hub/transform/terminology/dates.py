"""Date and number helpers shared by the parsers and builders (pure, no settings).

`norm_ts` checks an HL7/HPRIM timestamp `YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]` and returns it without the
fraction; `cda_ts` adds the time zone the CDA requires (`YYYYMMDDHHMMSS+ZZZZ`) using the zone the caller passes
(`Europe/Paris` by default in the chains). Invalid values raise ParseError with the caller's `where`;
the message never quotes the value (a birth date is a patient's).
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timezone, tzinfo

from hub.errors import ParseError

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_DECIMAL = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)$")
_NUM = r"([+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+))"
_RANGE = re.compile(r"^" + _NUM + r"\s*(?:-|–|—|à|a|;|\.\.|_)\s*" + _NUM + r"$")     # not `/`: 1/40 is a dilution
_BOUND = re.compile(r"^(<=|>=|=<|=>|<|>|≤|≥|inf\.?(?:\s*ou\s*égal)?\s*(?:à|a)?|sup\.?(?:\s*ou\s*égal)?\s*(?:à|a)?|"
                    r"inférieur(?:e)?\s*(?:ou\s*égal(?:e)?\s*)?(?:à|a)|supérieur(?:e)?\s*(?:ou\s*égal(?:e)?\s*)?(?:à|a)|"
                    r"<\s*ou\s*=|>\s*ou\s*=)\s*" + _NUM + r"$", re.I)
_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$")


def norm_ts(value: str, where: str, *, min_len: int = 8) -> str:
    """Validate a timestamp; return 'YYYYMMDD[HHMM[SS]][+ZZZZ]' (no fraction). Empty stays empty."""
    value = value.strip()
    if not value:
        return ""
    out, problem = _norm_ts(value, min_len)
    if problem:
        raise ParseError(problem, where=where)
    return out


@functools.lru_cache(maxsize=4096)
def _norm_ts(value: str, min_len: int) -> tuple[str, str]:
    """(normalised value, "") or ("", what is wrong): a report repeats its few times at every result."""
    m = _TS.match(value)
    if not m:
        return "", "invalid date/time (expected YYYYMMDD[HHMM[SS]][+ZZZZ] or ISO 8601)"
    parts = [p for p in m.groups()[:6] if p is not None]
    digits = "".join(parts)
    if len(digits) < min_len:
        return "", "date/time is not precise enough (at least YYYYMMDD)"
    try:
        datetime(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, int(parts[2]) if len(parts) > 2 else 1,
                 int(parts[3]) if len(parts) > 3 else 0, int(parts[4]) if len(parts) > 4 else 0,
                 int(parts[5]) if len(parts) > 5 else 0)
    except ValueError:
        return "", "invalid date/time (no such day or time)"
    tz = m.group(7) or ""
    if tz and (int(tz[1:3]) > 14 or int(tz[3:]) > 59):
        return "", "invalid time zone offset in a date/time"
    return digits + tz, ""


# the French way, as hospitals' software exports it: day first, a four-digit year (`02/04/2025 15:12`,
# `02.04.2025`, `02-04-2025 15:12:30`); local time
_FRENCH = re.compile(r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{4})(?:[ T](\d{1,2})[:h](\d{2})(?::(\d{2}))?)?$")


def any_ts(value: str, where: str) -> str:
    """A date/time as HL7/CDA digits (`20250402151200+0200`), ISO 8601 (`2025-04-02T15:12:00+02:00`,
    `2025-04-02`, `...Z`) or French, day first with a four-digit year (`02/04/2025 15:12`, `02.04.2025`)
    -> 'YYYYMMDD[HHMM[SS]][+ZZZZ]'. Empty stays empty."""
    value = value.strip()
    m = _ISO.match(value)
    if not m:
        fr = _FRENCH.match(value)
        if fr:
            d, _, mo, y, hh, mi, ss = fr.groups()
            return norm_ts(y + mo.zfill(2) + d.zfill(2) + (hh.zfill(2) + mi + (ss or "") if hh else ""), where)
        if not _TS.match(value):
            raise ParseError("invalid date/time (expected ISO 8601 such as 2025-04-02T15:12:00+02:00, dd/mm/yyyy "
                             "[HH:MM[:SS]] or YYYYMMDD[HHMM[SS]][+ZZZZ])", where=where)
        return norm_ts(value, where)
    y, mo, d, hh, mi, ss, zone = m.groups()
    digits = y + mo + d + (hh + mi + (ss or "") if hh else "")
    if zone:
        zone = "+0000" if zone == "Z" else zone.replace(":", "")
    return norm_ts(digits + (zone or ""), where)


def fr_date(value: str, where: str) -> str:
    """'dd/mm/yyyy' or 'yyyy-mm-dd' (HPRIM Net) -> 'YYYYMMDD'."""
    value = value.strip()
    m = re.match(r"^(\d{2})/(\d{2})/(\d{4})$", value)
    if m:
        return norm_ts(m.group(3) + m.group(2) + m.group(1), where)
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})$", value)
    if m:
        return norm_ts("".join(m.groups()), where)
    raise ParseError("invalid date (expected dd/mm/yyyy)", where=where)


def cda_ts(value: str, tz: tzinfo) -> str:
    """Timestamp for CDA: a date alone stays a date; a time gets seconds and the zone offset when missing."""
    if not value or len(value) <= 8:
        return value
    if value[-5] in "+-":
        return value
    digits = value.ljust(14, "0")[:14]
    return digits + _offset(digits, tz)


@functools.lru_cache(maxsize=4096)
def _offset(digits: str, tz: tzinfo) -> str:
    """The zone's `%z` offset at that local time (a report's results share a few analysis times: looked up once)."""
    local = _digits_time(digits) or datetime.strptime(digits, "%Y%m%d%H%M%S")
    return local.replace(tzinfo=tz).strftime("%z")


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
    low, high, _, _ = parse_range(text)
    return low, high


def parse_range(text: str, unit: str = "") -> tuple[str, str, bool, bool]:
    """A reference range as labs write it -> (low, high, low_open, high_open); ('', '', False, False) when it is
    not numeric (it then goes as text). Shapes: `4.10 - 5.90`, `4,1-5,9`, `[4.1;5.9]`, `(45 à 90)`, `-0.5 - 0.5`,
    `< 3.0` / `<3` / `inf. à 3` (high, open), `<= 3` / `≤ 3` / `< ou = 3` (high, closed), `> 60` / `sup. à 60`
    (low, open), `>= 60` / `≥ 60` / `supérieur ou égal à 60` (low, closed). `unit`: the result's unit, as the lab
    wrote it, which the range may repeat after its bounds (`150 - 400 G/l`, `< 5 mg/l`)."""
    text, unit = text.strip(), unit.strip()
    if unit and not unit[0].isdigit() and unit[0] not in ".,-" and text.lower().endswith(unit.lower()) \
            and len(text) > len(unit):           # a unit starting with a digit could be part of the bound
        text = text[: -len(unit)]
    text = text.strip().strip("()[]").strip()
    m = _RANGE.match(text)
    if m:
        low, high = decimal(m.group(1)), decimal(m.group(2))
        if float(low) > float(high):       # `5 - 3`, `10-3` (10^-3?): no interval says that; sent as written
            return "", "", False, False
        return low, high, False, False
    m = _BOUND.match(text)
    if m:
        op = m.group(1).lower().replace(" ", "")
        value = decimal(m.group(2))
        closed = "=" in op or "≤" in op or "≥" in op or "égal" in op
        if op.startswith(("<", "≤", "=<", "inf")):
            return "", value, False, not closed
        return value, "", not closed, False
    return "", "", False, False
