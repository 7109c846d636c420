"""Tamper evidence: the sealer that hash-chains committed audit events, and `verify`.

Writers never wait for the chain. Events are inserted unchained with a bigserial id (hub.audit.store); one sealer
in the whole hub (a PostgreSQL advisory lock elects it among processes) periodically appends blocks to
`audit_seal`, chaining events in id order: h[i] = sha256(h[i-1] || audit_canonical(event i)).

Ids can commit out of order, so the sealer only seals up to a horizon below which every id is final:
  1. read the sequence's last value L (every id <= L has been handed out);
  2. read, from pg_locks, the transactions holding a lock on audit_event or one of its partitions (any
     transaction that took an id holds one until it ends, since INSERT locks the table before computing defaults);
  3. wait until those transactions have ended; then every id <= L is committed or rolled back for good;
  4. seal the events with sealed_to < id <= L (SQL function audit_seal_upto), one block per month of `at`.
An event that appears later with an id <= sealed_to was inserted behind the chain (an explicit id): verify reports
it. Unrelated long transactions do not hold the sealer back; an idle transaction that inserted an event does.

`verify(conn, since)` recomputes every sealed event's hash from the stored previous hash and reports the first
altered, missing (deleted) or unsealed-behind-the-chain event, and any broken link between blocks; a link into a
month dropped by retention is checked against the head hash recorded at the purge boundary.

Settings read: audit.seal_interval, audit.seal_batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import asyncpg
import structlog

from hub.db import UNAVAILABLE

log = structlog.get_logger("hub.audit.chain")

SEALER_LOCK = 727002

_HORIZON = """
SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM audit_event_id_seq) AS upto,
       ARRAY(SELECT DISTINCT l.virtualtransaction FROM pg_locks l
             WHERE l.locktype = 'relation' AND l.pid IS DISTINCT FROM pg_backend_pid()
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND (l.relation = 'audit_event'::regclass
                    OR l.relation IN (SELECT inhrelid FROM pg_inherits
                                      WHERE inhparent = 'audit_event'::regclass))) AS inflight
"""


class AuditSealer:
    """Chains committed events. `run()` is the long-lived task the hub starts (one per process; only the process
    holding the advisory lock seals); `seal_once()` seals what can be sealed now (tests, `hub audit verify`)."""

    def __init__(self, *, interval: float = 2.0, batch: int = 50000, max_wait: float = 10.0):
        self.interval = interval
        self.batch = batch
        self.max_wait = max_wait

    async def _horizon(self, conn: asyncpg.Connection) -> int | None:
        """The highest id below which every id is final, or None if in-flight writers did not end in time."""
        row = await conn.fetchrow(_HORIZON)
        upto, inflight = row["upto"], list(row["inflight"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        delay = 0.005
        while inflight:
            inflight = [r["virtualxid"] for r in await conn.fetch(
                "SELECT virtualxid FROM pg_locks WHERE locktype = 'virtualxid' AND virtualxid = ANY($1::text[])",
                inflight)]
            if not inflight:
                break
            if loop.time() > deadline:
                log.warning("audit_seal_waiting", inflight=len(inflight), upto=upto)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        return upto

    async def seal_once(self, conn: asyncpg.Connection) -> int:
        """Seal every event that is final now; return how many were sealed (0 if another sealer is busy)."""
        upto = await self._horizon(conn)
        if upto is None:
            return 0
        total = 0
        while True:
            n = await conn.fetchval("SELECT audit_seal_upto($1, $2)", upto, self.batch)
            if n <= 0:
                break
            total += n
            if n < self.batch:
                break
        return total

    async def run(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """Seal every `interval` seconds until `stop` is set. Database errors are logged and retried."""
        while not stop.is_set():
            try:
                async with pool.acquire() as conn:
                    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SEALER_LOCK):
                        await _wait(stop, self.interval * 5)        # another process seals
                        continue
                    try:
                        while not stop.is_set():
                            n = await self.seal_once(conn)
                            if n:
                                head = await conn.fetchrow(
                                    "SELECT seq, encode(head_hash, 'hex') AS head FROM audit_seal"
                                    " ORDER BY seq DESC LIMIT 1")
                                log.info("audit_sealed", events=n, seq=head and head["seq"],
                                         head=head and head["head"])
                            await _wait(stop, self.interval)
                    finally:
                        try:
                            await conn.execute("SELECT pg_advisory_unlock($1)", SEALER_LOCK)
                        except BaseException:
                            conn.terminate()      # never leave the session lock on a pooled connection
                            raise
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("audit_seal_failed", error=str(exc))
                await _wait(stop, self.interval * 5)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


@dataclass(frozen=True)
class Problem:
    kind: str                  # altered | missing | unsealed | chain_broken
    event_id: int | None
    seq: int | None            # seal block
    detail: str

    def __str__(self) -> str:
        where = f"event {self.event_id}" if self.event_id is not None else f"seal block {self.seq}"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class VerifyReport:
    since: dt.datetime | None
    blocks: int = 0
    events: int = 0
    problems: int = 0
    first_problem: Problem | None = None
    head_seq: int | None = None
    head_hash: str | None = None
    pending: int = 0                        # events above the sealed horizon (not yet sealed)
    oldest_pending: dt.datetime | None = None
    purges: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def _add(self, found: list[Problem], count: int) -> None:
        self.problems += count
        for p in found:
            if self.first_problem is None or _position(p) < _position(self.first_problem):
                self.first_problem = p

    def lines(self) -> list[str]:
        out = [f"checked {self.events} sealed event(s) in {self.blocks} block(s)"
               + (f" since {self.since.isoformat()}" if self.since else "")]
        for p in self.purges:
            out.append(f"month {p['month']}: purged on {p['purged_at']:%Y-%m-%d} by {p['actor'] or 'retention'}"
                       f" ({p['events']} events, {p['blocks']} blocks, retention {p['retention_days']} days)")
        if self.head_seq is not None:
            out.append(f"chain head: block {self.head_seq} {self.head_hash}")
        if self.pending:
            out.append(f"{self.pending} event(s) not sealed yet (oldest {self.oldest_pending.isoformat()})")
        if self.ok:
            out.append("OK: no altered, missing or unsealed event")
        else:
            out.append(f"FAILED: {self.problems} problem(s); first: {self.first_problem}")
        return out


def _position(p: Problem) -> tuple[int, int]:
    return (p.event_id if p.event_id is not None else 0, p.seq or 0)


_LINKS = """
SELECT b.seq, b.first_id,
       CASE WHEN b.seq = 1 THEN audit_genesis() ELSE coalesce(p.head_hash, x.head_hash) END AS expected,
       b.prev_hash
FROM audit_seal b
LEFT JOIN audit_seal p ON p.seq = b.seq - 1
LEFT JOIN audit_purge_boundary x ON x.seq = b.seq - 1
WHERE b.last_at >= $1
  AND b.prev_hash IS DISTINCT FROM CASE WHEN b.seq = 1 THEN audit_genesis() ELSE coalesce(p.head_hash, x.head_hash) END
ORDER BY b.seq
"""

_EVENTS = """
WITH u AS (
    SELECT b.seq, u.ord, u.id, u.h,
           coalesce(lag(u.h) OVER (PARTITION BY b.seq ORDER BY u.ord), b.prev_hash) AS prev
    FROM audit_seal b, unnest(b.ids, b.hashes) WITH ORDINALITY AS u(id, h, ord)
    WHERE b.last_at >= $1
), c AS (
    SELECT u.seq, u.ord, u.id, e.id IS NULL AS missing,
           e.id IS NOT NULL AND sha256(u.prev || audit_canonical(e)) IS DISTINCT FROM u.h AS altered
    FROM u LEFT JOIN audit_event e ON e.id = u.id AND e.at >= $2
)
SELECT count(*) AS checked, count(*) FILTER (WHERE missing OR altered) AS bad,
       (SELECT ARRAY[seq, id, missing::int] FROM c WHERE missing OR altered ORDER BY seq, ord LIMIT 1) AS first
FROM c
"""

_BEHIND = """
SELECT count(*) AS n, min(e.id) AS first_id
FROM audit_event e
LEFT JOIN (SELECT unnest(ids) AS id FROM audit_seal WHERE last_at >= $1) s ON s.id = e.id
WHERE e.at >= $1 AND e.id <= $2 AND s.id IS NULL
"""


async def verify(conn: asyncpg.Connection, since: dt.datetime | None = None) -> VerifyReport:
    """Recompute the chain for blocks ending at or after `since` (all if None) and report what does not hold."""
    report = VerifyReport(since=since)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    since_at = since or epoch
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute("SET LOCAL work_mem = '256MB'")
        head = await conn.fetchrow("SELECT seq, head_hash, sealed_to FROM (SELECT seq, head_hash, sealed_to"
                                   " FROM audit_seal UNION ALL SELECT seq, head_hash, sealed_to"
                                   " FROM audit_purge_boundary) s ORDER BY seq DESC LIMIT 1")
        sealed_to = head["sealed_to"] if head else 0
        if head:
            report.head_seq, report.head_hash = head["seq"], head["head_hash"].hex()
        report.blocks = await conn.fetchval("SELECT count(*) FROM audit_seal WHERE last_at >= $1", since_at)
        floor = await conn.fetchval("SELECT min(first_at) FROM audit_seal WHERE last_at >= $1", since_at)
        floor = min(floor, since_at) if floor else since_at
        links = await conn.fetch(_LINKS, since_at)
        report._add([Problem("chain_broken", r["first_id"], r["seq"],
                             "block does not follow its predecessor (a block was removed or rewritten)")
                     for r in links[:1]], len(links))
        row = await conn.fetchrow(_EVENTS, since_at, floor)
        report.events = row["checked"]
        if row["bad"]:
            seq, eid, missing = row["first"]
            report._add([Problem("missing" if missing else "altered", eid, seq,
                                 "sealed but no longer in the table (deleted, or its time rewritten)" if missing
                                 else "its content no longer matches the hash sealed for it")], row["bad"])
        behind = await conn.fetchrow(_BEHIND, floor, sealed_to)
        if behind["n"]:
            report._add([Problem("unsealed", behind["first_id"], None,
                                 "unsealed (inserted behind the chain)")], behind["n"])
        pending = await conn.fetchrow("SELECT count(*) AS n, min(at) AS oldest FROM audit_event WHERE id > $1",
                                      sealed_to)
        report.pending, report.oldest_pending = pending["n"], pending["oldest"]
        report.purges = [dict(r) for r in await conn.fetch(
            "SELECT to_char(part, 'YYYY-MM') AS month, purged_at, events, blocks, retention_days, actor"
            " FROM audit_purge ORDER BY part, id")]
    return report
