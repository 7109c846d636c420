"""Directory search for operators (`hub directory lookup`, GET /api/directory/lookup): by address, `@domain`,
national id (IDNPS or RPPS), FINESS / idNatSt, SIRET, ADELI, or free text ("dupont lyon").

Free text is folded like the imported search columns (hub.directory.normalize.fold: case and accents ignored);
every word must occur in a row's folded text; rows where each word is a whole word come first, then partial-word
matches. It is a scan of the current generation (no text index, so imports stay fast; see migration 0010).
Identifier queries use the btree indexes. Each match says why it matched. Read-only, current generation only (the views). Input trusted: none; the query is bounded and only ever
passed as a parameter. Reads no settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from hub.directory import normalize
from hub.errors import InputError

MAX_QUERY = 200
_MAILBOX = """
    SELECT 'mailbox' AS kind, m.address, m.mailbox_type, m.national_id, m.civility, m.last_name, m.first_name,
           m.profession_label, m.specialty_label, m.service, m.structure_id, m.finess, m.structure_name,
           m.town, m.postcode, m.dematerialisation, coalesce(pa.paper, pn.paper, false) AS paper,
           coalesce(pa.preferred_format, pn.preferred_format) AS preferred_format
    FROM directory_mailbox m
    LEFT JOIN directory_preference pa ON pa.key = m.address
    LEFT JOIN directory_preference pn ON pn.key = m.national_id"""
_PRACTITIONER = """
    SELECT 'practitioner' AS kind, p.national_id, p.civility, p.last_name, p.first_name, p.profession_label,
           p.specialty_label, p.practice_modes, p.activities, coalesce(pn.paper, false) AS paper,
           pn.preferred_mailbox, pn.preferred_format
    FROM directory_practitioner p LEFT JOIN directory_preference pn ON pn.key = p.national_id"""
_STRUCTURE = """
    SELECT 'structure' AS kind, s.structure_key, s.finess, s.siret, s.name, s.brand, s.address_lines, s.postcode,
           s.town, s.department, s.sector_label
    FROM directory_structure s"""
_MAILBOX_ORDER = " ORDER BY m.mailbox_type = 'PER' DESC, m.last_name, m.first_name, m.address LIMIT $2"


@dataclass(frozen=True)
class Match:
    kind: str                 # "mailbox" | "practitioner" | "structure"
    matched: str              # why: "address", "national id", "FINESS", "all words", "partial words", ...
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "matched": self.matched, **self.data}


def _matches(rows: list[asyncpg.Record], matched: str) -> list[Match]:
    out = []
    for r in rows:
        data = dict(r)
        kind = data.pop("kind")
        out.append(Match(kind=kind, matched=matched, data={k: v for k, v in data.items() if v is not None}))
    return out


async def search(conn: asyncpg.Connection, query: str, *, limit: int = 20) -> list[Match]:
    """Best matches first. InputError for an empty, too long or wordless query."""
    q = (query or "").strip()
    if not q:
        raise InputError("empty query")
    if len(q) > MAX_QUERY:
        raise InputError(f"query longer than {MAX_QUERY} characters")
    limit = max(1, min(limit, 200))
    kind = normalize.classify(q)
    if kind == "address":
        if q.startswith("@"):
            domain = q[1:].lower()
            if not domain or "@" in domain or "%" in domain or "_" in domain:
                raise InputError(f"not a domain: {q!r}")
            rows = await conn.fetch(_MAILBOX + " WHERE m.address LIKE '%@' || $1" + _MAILBOX_ORDER, domain, limit)
            return _matches(rows, "domain")
        addr = normalize.address(q)
        if addr is None:
            raise InputError(f"not a mailbox address: {q!r}")
        local, _, _ = addr.rpartition("@")
        out = _matches(await conn.fetch(_MAILBOX + " WHERE m.address = $1 LIMIT $2", addr, limit), "address")
        nid = normalize.national_id(local)
        if not out and nid:   # <national id>@<resolution domain>
            out = await _by_national_id(conn, nid, limit)
        return out
    if kind in ("idnps", "rpps"):
        return await _by_national_id(conn, normalize.national_id(q), limit)
    if kind in ("finess", "finess_or_adeli", "idnatst"):
        finess = q[1:] if kind == "idnatst" else q.upper()
        out = _matches(await conn.fetch(_STRUCTURE + " WHERE s.finess = $1 LIMIT $2", finess, limit), "FINESS")
        out += _matches(await conn.fetch(_MAILBOX + " WHERE m.finess = $1" + _MAILBOX_ORDER, finess, limit),
                        "FINESS")
        if kind == "finess_or_adeli":
            out += await _by_national_id(conn, "0" + q, limit)
        return out[:limit]
    if kind == "siret":
        siret = q[-14:]
        out = _matches(await conn.fetch(_STRUCTURE + " WHERE s.siret = $1 LIMIT $2", siret, limit), "SIRET")
        out += _matches(await conn.fetch(_MAILBOX + " WHERE m.siret = $1" + _MAILBOX_ORDER, siret, limit), "SIRET")
        return out[:limit]
    return await _text(conn, q, limit)


async def _by_national_id(conn: asyncpg.Connection, nid: str, limit: int) -> list[Match]:
    out = _matches(await conn.fetch(_PRACTITIONER + " WHERE p.national_id = $1 LIMIT $2", nid, limit),
                   "national id")
    out += _matches(await conn.fetch(_MAILBOX + " WHERE m.national_id = $1" + _MAILBOX_ORDER, nid, limit),
                    "national id")
    return out[:limit]


async def _text(conn: asyncpg.Connection, q: str, limit: int) -> list[Match]:
    """Every word must occur in the folded search text; rows where each is a whole word rank first. One scan of
    each table's current generation (no text index: see migration 0010)."""
    words = list(dict.fromkeys(normalize.fold(q).split()))
    if not words:
        raise InputError(f"no searchable word in {q!r}")
    partial = [f"%{w}%" for w in words]          # folded words are [a-z0-9]: nothing to escape
    whole = [f"% {w} %" for w in words]
    ranked: list[tuple[bool, int, Match]] = []
    for n, (select, alias, order) in enumerate((
            (_MAILBOX, "m", "m.mailbox_type = 'PER' DESC, m.last_name, m.first_name, m.address"),
            (_PRACTITIONER, "p", "p.last_name, p.first_name, p.national_id"),
            (_STRUCTURE, "s", "s.name, s.structure_key"))):
        whole_sql = f"(' ' || {alias}.search || ' ') LIKE ALL ($2::text[])"
        sql = select.replace(" FROM ", f", {whole_sql} AS whole_words FROM ", 1)
        rows = await conn.fetch(f"{sql} WHERE {alias}.search LIKE ALL ($1::text[])"
                                f" ORDER BY whole_words DESC, {order} LIMIT $3", partial, whole, limit)
        for r in rows:
            data = dict(r)
            is_whole = data.pop("whole_words")
            kind = data.pop("kind")
            why = ("all words: " if is_whole else "partial words: ") + " ".join(words)
            ranked.append((not is_whole, n, Match(kind=kind, matched=why,
                                                  data={k: v for k, v in data.items() if v is not None})))
    ranked.sort(key=lambda t: (t[0], t[1]))      # stable: keeps each table's order
    return [m for _, _, m in ranked[:limit]]
