"""What /healthz and the sampled metrics say about the hub: a real database probe with a short timeout, and one
sample of the queue, the trust list, the directory and the audit sealer (taken every few seconds by worker 0).

Settings read: hub.data_dir, database.url (the embedded PostgreSQL's state, written by hub.supervisor), hub.domains
(where postmaster mail goes).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from hub import observability as obs

PROBE_TIMEOUT = 2.0
TRUST_LIST_MAX_AGE = 48 * 3600          # the national list is published several times a day
DIRECTORY_MAX_AGE = 8 * 86400           # the directory extraction is published daily

QUEUE_STATES = ("pending", "queued", "deferred", "held", "dead")

_QUEUE = """
SELECT CASE WHEN r.state = 'queued' AND r.attempts > 0 THEN 'deferred' ELSE r.state END AS state,
       count(*) AS n, extract(epoch FROM now() - min(m.received_at))::float8 AS oldest
FROM recipient r JOIN message m ON m.id = r.message_id
WHERE r.state IN ('pending', 'queued', 'held', 'dead')
GROUP BY 1
"""
_TRUST = "SELECT imported_at, generated_at FROM trust_list WHERE current"
_DIRECTORY = "SELECT source, max(finished_at) AS at FROM directory_import WHERE status = 'done' GROUP BY source"
_UNSEALED = """
SELECT count(*) AS n, extract(epoch FROM now() - min(at))::float8 AS lag FROM audit_event
WHERE id > coalesce((SELECT max(sealed_to) FROM (SELECT sealed_to FROM audit_seal
                                                  UNION ALL SELECT sealed_to FROM audit_purge_boundary) s), 0)
"""


@dataclass
class Sample:
    taken: float = field(default_factory=time.time)
    queue: dict[str, int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)
    trust_imported: float | None = None
    trust_generated: float | None = None
    directory: dict[str, float] = field(default_factory=dict)
    unsealed: int = 0
    seal_lag: float = 0.0

    def warnings(self, now: float | None = None) -> list[str]:
        now = now or time.time()
        out = []
        if self.trust_imported is None:
            out.append("no authorised-domains list imported: only local destinations are deliverable")
        elif now - self.trust_imported > TRUST_LIST_MAX_AGE:
            out.append(f"the authorised-domains list was imported {(now - self.trust_imported) / 3600:.0f} h ago"
                       f" (more than {TRUST_LIST_MAX_AGE // 3600} h): is the daily `hub trust import` running?")
        mss = self.directory.get("mssante")
        if mss is not None and now - mss > DIRECTORY_MAX_AGE:
            out.append(f"the directory was imported {(now - mss) / 86400:.0f} days ago (more than "
                       f"{DIRECTORY_MAX_AGE // 86400}): is the nightly `hub directory import` running?")
        return out


async def probe(pool) -> tuple[str | None, int | None]:
    """(None, queued recipients) when PostgreSQL answers a real query within PROBE_TIMEOUT, else (reason, None)."""
    async def run():
        async with pool.acquire(timeout=PROBE_TIMEOUT) as conn:
            return await conn.fetchval("SELECT count(*) FROM recipient WHERE state = 'queued'",
                                       timeout=PROBE_TIMEOUT)
    try:
        queued = await asyncio.wait_for(run(), PROBE_TIMEOUT + 0.5)
    except Exception as exc:          # whatever the cause, the database is not usable now
        return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__, None
    return None, queued


async def sample(conn) -> Sample:
    s = Sample()
    for r in await conn.fetch(_QUEUE):
        s.queue[r["state"]] = r["n"]
        s.oldest[r["state"]] = max(0.0, r["oldest"] or 0.0)
    row = await conn.fetchrow(_TRUST)
    if row is not None:
        s.trust_imported = row["imported_at"].timestamp()
        s.trust_generated = row["generated_at"].timestamp() if row["generated_at"] else None
    s.directory = {r["source"]: r["at"].timestamp() for r in await conn.fetch(_DIRECTORY) if r["at"]}
    row = await conn.fetchrow(_UNSEALED)
    s.unsealed, s.seal_lag = row["n"], max(0.0, row["lag"] or 0.0)
    return s


def export(s: Sample) -> None:
    for state in QUEUE_STATES:
        obs.QUEUE_DEPTH.labels(state).set(s.queue.get(state, 0))
        obs.QUEUE_OLDEST.labels(state).set(s.oldest.get(state, 0.0))
    obs.TRUST_LIST_IMPORTED.set(s.trust_imported or 0)
    obs.TRUST_LIST_GENERATED.set(s.trust_generated or 0)
    for source in ("mssante", "ps"):
        obs.DIRECTORY_IMPORTED.labels(source).set(s.directory.get(source, 0))
    obs.AUDIT_UNSEALED.set(s.unsealed)
    obs.AUDIT_SEAL_LAG.set(s.seal_lag)


def postmaster_warning(settings, trust) -> str | None:
    """RFC 5321 4.5.1: postmaster must be accepted. `RCPT TO:<Postmaster>` is postmaster at the first hub domain,
    accepted only when that domain is a destination the hub delivers to (TrustSpace.delivers_to)."""
    domain = settings.hub.domains[0].lower()
    if trust.delivers_to(domain):
        return None
    return (f"postmaster@{domain} has no destination ({domain} is neither in delivery.local_domains nor an "
            "authorised MSSanté domain): RCPT TO:<postmaster> gets 550 5.1.1 (deploy/README.md, Network)")


def embedded_status(settings) -> dict | None:
    """The supervisor's view of the embedded PostgreSQL (running / restarting, restarts, last error), if any."""
    if settings.database.url:
        return None
    try:
        return json.loads(Path(settings.data_dir, "postgresql.status.json").read_text())
    except (OSError, ValueError):
        return None
