"""Pure helpers for the directory: folding text for search, and recognising addresses and national identifiers.

Trusts nothing: every function accepts any string and returns None (or an empty string) for what it cannot read.
Reads no settings.

Identifiers (MSSANTE.md §4.3): RPPS 11 digits; ADELI 9 digits; IDNPS (national id of a professional) = `8`+RPPS
(12 chars) or `0`+ADELI (10 chars); FINESS 9 chars (Corsica `2A`/`2B`); idNatSt = `1`+FINESS or `3`+SIRET (14 digits).
"""

from __future__ import annotations

import re
import unicodedata

_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae", "ß": "ss", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th",
                            "’": " "})
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

RPPS = re.compile(r"^\d{11}$")
ADELI = re.compile(r"^\d{9}$")
IDNPS = re.compile(r"^(8\d{11}|0\d{9})$")
FINESS = re.compile(r"^(\d{9}|2[ab]\d{7})$")
SIRET = re.compile(r"^\d{14}$")
_ADDRESS = re.compile(r"^[^@\s<>]+@[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$")


def fold(text: str) -> str:
    """Lower case, accents removed, every run of non-alphanumeric characters made one space.
    `"Hôpital Saint-Éloi, Œuvre"` -> `"hopital saint eloi oeuvre"`."""
    if not text:
        return ""
    text = text.lower()
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text.translate(_LIGATURES)).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub(" ", text).strip()


def address(rcpt: str) -> str | None:
    """The lower-case mailbox address in `rcpt` (angle brackets and spaces removed), or None if it is not one."""
    if not rcpt:
        return None
    value = rcpt.strip().strip("<>").strip().lower()
    if not _ADDRESS.match(value):
        return None
    return value


def national_id(value: str) -> str | None:
    """An IDNPS from an IDNPS (returned as is) or a bare RPPS (11 digits -> `8`+RPPS); else None. A bare 9-digit
    number is not taken as ADELI here: it could as well be a FINESS."""
    value = value.strip()
    if IDNPS.match(value):
        return value
    if RPPS.match(value):
        return "8" + value
    return None


def structure_ids(structure_type: str, structure_id: str) -> tuple[str | None, str | None]:
    """(finess, siret) from the extraction's "Type identifiant structure" / "Identification Structure"."""
    sid = structure_id.strip().upper()
    kind = structure_type.strip()
    if not sid:
        return None, None
    if kind == "1" or (not kind and sid.startswith("1") and len(sid) == 10):
        body = sid[1:] if len(sid) == 10 and sid.startswith("1") else sid
        return (body if FINESS.match(body.lower()) else None), None
    if kind == "3" or (not kind and sid.startswith("3") and len(sid) == 15):
        body = sid[1:] if len(sid) == 15 and sid.startswith("3") else sid
        return None, (body if SIRET.match(body) else None)
    return None, None


def sender_structure(value: str | None) -> tuple[str | None, str | None, str | None]:
    """(finess, siret, raw) for a structure named by a sender: FINESS, `1`+FINESS, SIRET, `3`+SIRET or other."""
    if not value:
        return None, None, None
    v = value.strip().upper()
    if FINESS.match(v.lower()):
        return v, None, v
    if len(v) == 10 and v.startswith("1") and FINESS.match(v[1:].lower()):
        return v[1:], None, v
    if SIRET.match(v):
        return None, v, v
    if len(v) == 15 and v.startswith("3") and SIRET.match(v[1:]):
        return None, v[1:], v
    return None, None, v


def classify(query: str) -> str:
    """What a lookup query looks like: address, idnps, rpps, finess_or_adeli, finess, idnatst, siret, text."""
    q = query.strip()
    low = q.lower()
    if "@" in q:
        return "address"
    if IDNPS.match(q):
        return "idnps"
    if RPPS.match(q):
        return "rpps"
    if ADELI.match(q):
        return "finess_or_adeli"
    if FINESS.match(low):
        return "finess"
    if len(q) == 10 and q.startswith("1") and FINESS.match(low[1:]):
        return "idnatst"
    if SIRET.match(q) or (len(q) == 15 and q.startswith("3") and SIRET.match(q[1:])):
        return "siret"
    return "text"
