"""Retention: monthly audit partitions created ahead, whole months dropped after audit.event_retention_days, and
message bodies purged audit.body_retention_days after the message became final. Every purge is itself audited
(`purged` events with counts).

Partition creation and dropping go through SECURITY DEFINER functions owned by the admin role
(audit_ensure_partitions, audit_drop_expired), so the runtime role can run this loop without any right to create or
drop tables; audit_drop_expired refuses a retention below audit_retention_floor() (30 days unless an admin changes
it). Dropping a month also drops its seal blocks; the head hash at each purge boundary is kept so that
`hub audit verify` still checks the chain across the gap (hub.audit.chain).

Body purge: `UPDATE message SET body = NULL, body_purged_at = now()` in batches of 1,000 rows for messages with
finished_at older than the retention (index message_finished).

Settings read: audit.event_retention_days, audit.body_retention_days, audit.purge_interval,
audit.partitions_ahead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import asyncpg
import structlog

from hub.audit.store import Event, record
from hub.db import UNAVAILABLE
from hub.settings import Settings

log = structlog.get_logger("hub.audit.retention")

BODY_BATCH = 1000


@dataclass
class PurgeResult:
    bodies: int = 0
    months: list[dict] = field(default_factory=list)     # {"month", "events", "keys", "blocks"}
    partitions_created: int = 0


async def ensure_partitions(conn: asyncpg.Connection, months_ahead: int = 2) -> int:
    """Create this month's and the next `months_ahead` months' partitions if missing; return how many months."""
    return await conn.fetchval("SELECT audit_ensure_partitions($1)", months_ahead)


async def purge_bodies(conn: asyncpg.Connection, days: int, *, actor: str = "retention") -> int:
    """Drop the bodies of messages final for more than `days` days; audit the count. Returns the count."""
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    total = 0
    while True:
        async with conn.transaction():
            ids = [r["id"] for r in await conn.fetch(
                "UPDATE message SET body = NULL, body_purged_at = now() WHERE id IN ("
                " SELECT id FROM message WHERE finished_at < $1 AND body IS NOT NULL"
                " LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id", cutoff, BODY_BATCH)]
            n = len(ids)
            if ids:      # the transformed variants go with the original
                await conn.execute("UPDATE message_variant SET body = NULL WHERE message_id = ANY($1)", ids)
            if n:
                await record(conn, Event("purged", actor=actor, facts={
                    "scope": "bodies", "messages": n, "finished_before": cutoff.isoformat(),
                    "retention_days": days}))
        total += n
        if n < BODY_BATCH:
            return total


async def drop_expired(conn: asyncpg.Connection, days: int, *, actor: str = "retention") -> list[dict]:
    """Drop whole months of audit events older than `days` days (see the module docstring)."""
    async with conn.transaction():
        rows = await conn.fetch("SELECT * FROM audit_drop_expired($1, $2)", days, actor)
    return [{"month": r["part"].strftime("%Y-%m"), "events": r["events"], "keys": r["keys"],
             "blocks": r["blocks"]} for r in rows]


async def purge(conn: asyncpg.Connection, settings: Settings, *, actor: str = "retention") -> PurgeResult:
    """One retention pass: partitions ahead, bodies, expired months."""
    a = settings.audit
    result = PurgeResult()
    result.partitions_created = await ensure_partitions(conn, a.partitions_ahead)
    result.bodies = await purge_bodies(conn, a.body_retention_days, actor=actor)
    result.months = await drop_expired(conn, a.event_retention_days, actor=actor)
    return result


async def retention_loop(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> None:
    """Run `purge` every audit.purge_interval seconds until `stop` is set (first pass at once). Errors are logged
    and the pass is retried at the next interval."""
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                r = await purge(conn, settings)
            if r.bodies or r.months or r.partitions_created:
                log.info("audit_purged", bodies=r.bodies, months=r.months, partitions_created=r.partitions_created)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("audit_purge_failed", error=str(exc))
        try:
            await asyncio.wait_for(stop.wait(), settings.audit.purge_interval)
        except asyncio.TimeoutError:
            pass
