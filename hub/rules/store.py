"""Rule-set versions in PostgreSQL (table `rule_set`, migration 0020). Connection-first functions.

The current version is the highest. `activate` is idempotent on content: storing the same files as the current
version returns that version unchanged. Activation is serialised by a transaction-level advisory lock, records the
`rules_activated` audit event in the same transaction and sends NOTIFY `hub_rules` (payload: the version) on commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

import asyncpg

from hub.audit.store import Event, record
from hub.rules.loader import content_hash

CHANNEL = "hub_rules"
_LOCK = 727020


@dataclass(frozen=True)
class StoredVersion:
    version: int
    content_hash: str
    files: Mapping[str, str]
    activated_at: datetime
    activated_by: str
    reason: str
    rollback_of: int | None


def _row(r: asyncpg.Record) -> StoredVersion:
    files = r["files"]
    if isinstance(files, str):    # a connection without the hub's JSON codec
        import json

        files = json.loads(files)
    return StoredVersion(r["version"], r["content_hash"], files, r["activated_at"], r["activated_by"],
                         r["reason"], r["rollback_of"])


async def current_version(conn: asyncpg.Connection) -> int | None:
    """Cheap: an index-only lookup, polled by every hub process."""
    return await conn.fetchval("SELECT max(version) FROM rule_set")


async def get(conn: asyncpg.Connection, version: int | None = None) -> StoredVersion | None:
    """A stored version, or the current one."""
    if version is None:
        row = await conn.fetchrow("SELECT * FROM rule_set ORDER BY version DESC LIMIT 1")
    else:
        row = await conn.fetchrow("SELECT * FROM rule_set WHERE version = $1", version)
    return _row(row) if row else None


async def history(conn: asyncpg.Connection, limit: int = 50) -> list[StoredVersion]:
    rows = await conn.fetch("SELECT * FROM rule_set ORDER BY version DESC LIMIT $1", limit)
    return [_row(r) for r in rows]


async def activate(conn: asyncpg.Connection, files: Mapping[str, str], *, actor: str, reason: str = "reload",
                   rollback_of: int | None = None) -> tuple[int, bool]:
    """Store `files` as the new current version unless they equal the current one. Returns (version, created).

    The caller validates the files first (an invalid set must never be stored)."""
    digest = content_hash(files)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        last = await conn.fetchrow("SELECT version, content_hash FROM rule_set ORDER BY version DESC LIMIT 1")
        if last is not None and last["content_hash"] == digest:
            return last["version"], False
        version = (last["version"] if last else 0) + 1
        await conn.execute(
            "INSERT INTO rule_set (version, content_hash, files, activated_by, reason, rollback_of)"
            " VALUES ($1, $2, $3, $4, $5, $6)", version, digest, dict(files), actor, reason, rollback_of)
        await record(conn, Event(event="rules_activated", rule_version=version, actor=actor, facts={
            "version": version, "previous_version": last["version"] if last else None, "content_hash": digest,
            "files": sorted(files), "actor": actor, "reason": reason, "rollback_of": rollback_of}))
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(version))
    return version, True
