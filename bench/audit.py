"""Audit bench: search latency on a large trail, sealing speed, and the cost of audit writes on intake throughput.

    .venv/bin/python bench/audit.py [--events 10000000] [--seconds 20] [--concurrency 50] [--url ADMIN_URL]

1. Fills --events audit events (10 per message) spread over the last 180 days with server-side
   INSERT ... SELECT.
2. Seals them all with the sealer's own SQL (blocks of 50,000; this also writes the ~8 search keys per message),
   VACUUM ANALYZE, and runs `verify` on the last day.
3. Times typical searches through hub.audit.search.search (query + page summaries, 50 rows), as the runtime role:
   by patient (no period), by recipient over a month, by sender over a day; prints p50 / p95.
4. Measures intake-like transactions per second (INSERT message with a 10 kB body + 2 recipients, commit) at
   --concurrency, without and with the audit write (`record(received)`, the sealer running), in --rounds pairs of
   short runs alternating A B / B A, and prints the median of the per-pair cost in % (robust to other load on the
   machine), plus the cost of an empty extra round trip (`SELECT 1`) for scale: on a CPU-bound machine the
   statement, not the row, is most of what an audit write costs.

Without --url it runs an embedded PostgreSQL (pgserver binaries, fsync on) in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub import db  # noqa: E402
from hub.audit.chain import AuditSealer, verify  # noqa: E402
from hub.audit.search import Filters, search  # noqa: E402
from hub.audit.store import Event, record  # noqa: E402

DAYS = 180
CHUNK = 100_000   # messages per fill transaction

FILL_MESSAGES = """
INSERT INTO bench_msg
SELECT g, 'b' || g, now() - make_interval(secs => {days} * 86400.0 * (1 - g::float8 / {total})),
       'acct-' || (g % 50),
       'sender' || (abs(hashint4(g)) % 2000) || '@ch' || (g % 50) || '.example',
       'dr' || floor(20000 * power(random(), 3))::int || '@medecin.mssante.fr',
       'dr' || floor(20000 * random())::int || '@labo.mssante.fr',
       sha256(convert_to('patient-' || floor(random() * 300000)::int, 'UTF8')),
       (ARRAY['11502-2', '11488-4', '18842-5', '34133-9', '60591-5'])[1 + (g % 5)],
       1 + (g * 5 / {total})
FROM generate_series($1::int, $2::int) g
"""

FILL_EVENTS = """
INSERT INTO audit_event (at, message_id, event, account, sender, recipient, patient_key, doc_type, rule_version,
                         facts)
SELECT m.at + make_interval(secs => e.i * 2), m.id,
       (ARRAY['received', 'routed', 'routed', 'transformed', 'queued', 'delivery_attempted', 'delivered',
              'delivery_attempted', 'delivered', 'notification_sent'])[e.i],
       CASE WHEN e.i <= 4 THEN m.account END,
       CASE WHEN e.i <= 3 THEN m.sender END,
       CASE WHEN e.i IN (2, 6, 7) THEN m.r1 WHEN e.i IN (3, 8, 9) THEN m.r2 END,
       CASE WHEN e.i = 4 THEN m.pk END,
       CASE WHEN e.i = 4 THEN m.doc END,
       CASE WHEN e.i IN (2, 3) THEN m.rv END,
       CASE WHEN e.i = 1 THEN jsonb_build_object('peer', '10.1.2.3', 'tls', 'TLSv1.3', 'size', 12345,
                                                 'recipients', jsonb_build_array(m.r1, m.r2))
            WHEN e.i IN (2, 3) THEN '{"rule_id": "default", "resolution": "directory"}'::jsonb
            WHEN e.i = 4 THEN jsonb_build_object('input_sha256', encode(m.pk, 'hex'), 'transform', 'hprim-cda')
            WHEN e.i IN (6, 8) THEN '{"attempt": 1, "reply": "250 2.0.0 Ok: queued as 4XyZ", "tls": "TLSv1.3",
                                      "next_hop": "mx.operator.example:25"}'::jsonb
            WHEN e.i IN (7, 9) THEN '{"reply": "250 2.0.0 Ok: queued as 4XyZ"}'::jsonb
            ELSE '{"kind": "success"}'::jsonb END
FROM bench_msg m CROSS JOIN generate_series(1, 10) AS e(i)
WHERE m.g BETWEEN $1 AND $2
ORDER BY m.g, e.i
"""

def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def fill(admin: asyncpg.Connection, events: int) -> None:
    messages = max(1, events // 10)
    t0 = time.perf_counter()
    await admin.execute("CREATE UNLOGGED TABLE bench_msg (g int, id text, at timestamptz, account text,"
                        " sender text, r1 text, r2 text, pk bytea, doc text, rv int)")
    month = dt.date.today().replace(day=1)
    for _ in range(DAYS // 28 + 2):
        await admin.execute("SELECT audit_ensure_partition($1)", month)
        month = (month - dt.timedelta(days=1)).replace(day=1)
    for lo in range(1, messages + 1, CHUNK):
        hi = min(messages, lo + CHUNK - 1)
        async with admin.transaction():
            await admin.execute(FILL_MESSAGES.format(days=DAYS, total=messages), lo, hi)
            await admin.execute(FILL_EVENTS, lo, hi)
        print(f"  filled {hi * 10:>10,} events ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"fill: {messages * 10:,} events, {messages:,} messages in {time.perf_counter() - t0:.0f} s")


async def seal_all(conn: asyncpg.Connection, admin: asyncpg.Connection) -> None:
    t0 = time.perf_counter()
    n = await AuditSealer(batch=50_000).seal_once(conn)
    took = time.perf_counter() - t0
    keys = await conn.fetchval("SELECT count(*) FROM audit_message_key")
    print(f"seal: {n:,} events in {took:.0f} s ({n / took:,.0f} events/s), {keys:,} search keys written")
    await admin.execute("VACUUM ANALYZE audit_event")
    await admin.execute("VACUUM ANALYZE audit_message_key")
    t0 = time.perf_counter()
    report = await verify(conn, dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    print(f"verify (last day): {report.events:,} events, ok={report.ok}, {time.perf_counter() - t0:.1f} s")


async def searches(conn: asyncpg.Connection, runs: int) -> None:
    async def sample(kind: str) -> list[asyncpg.Record]:
        return await conn.fetch("SELECT value, received_at FROM audit_message_key TABLESAMPLE SYSTEM (1)"
                                " WHERE kind = $1::text::\"char\" LIMIT $2", kind, runs * 20)

    patients, recipients, senders = await sample("p"), await sample("r"), await sample("s")
    random.seed(7)
    cases = {
        "by patient": [Filters(patient_key=bytes.fromhex(r["value"])) for r in random.sample(patients, runs)],
        "by recipient, one month": [
            Filters(recipient=r["value"], since=r["received_at"] - dt.timedelta(days=15),
                    until=r["received_at"] + dt.timedelta(days=15)) for r in random.sample(recipients, runs)],
        "by sender, one day": [
            Filters(sender=r["value"], since=r["received_at"].replace(hour=0, minute=0, second=0, microsecond=0),
                    until=r["received_at"].replace(hour=0, minute=0, second=0, microsecond=0)
                    + dt.timedelta(days=1)) for r in random.sample(senders, runs)],
    }
    for name, filters in cases.items():
        times, rows = [], []
        for f in filters:
            t0 = time.perf_counter()
            page = await search(conn, f, limit=50)
            times.append((time.perf_counter() - t0) * 1000)
            rows.append(len(page.messages))
        print(f"search {name:<24} p50 {pct(times, 50):6.1f} ms  p95 {pct(times, 95):6.1f} ms"
              f"  (n={len(times)}, rows/page median {statistics.median(rows):.0f})")


RECIPIENTS_SQL = ("INSERT INTO recipient (message_id, rcpt, address, domain, state)"
                  " SELECT $1, r, r, split_part(r, '@', 2), 'queued' FROM unnest($2::text[]) r")


async def intake(pool: asyncpg.Pool, seconds: float, concurrency: int, mode: str) -> float:
    """Intake-like transactions per second; mode: none, record (the audit INSERT), select1 (an empty statement)."""
    body = b"x" * 10_000
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            mid = uuid.uuid4().hex
            rcpts = [f"dr{random.randrange(20000)}@medecin.mssante.fr", "sec@labo.mssante.fr"]
            event = Event("received", message_id=mid, account="acct-1", sender="dpi@ch1.example",
                          recipients=tuple(rcpts), facts={"peer": "10.1.2.3", "tls": "TLSv1.3", "size": len(body)})
            async with pool.acquire() as c:
                async with c.transaction():
                    await c.execute("INSERT INTO message (id, account, mail_from, state, size, body)"
                                    " VALUES ($1, 'acct-1', 'dpi@ch1.example', 'queued', $2, $3)",
                                    mid, len(body), body)
                    await c.execute(RECIPIENTS_SQL, mid, rcpts)
                    if mode == "record":
                        await record(c, event)
                    elif mode == "select1":
                        await c.execute("SELECT 1")
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - t0)


async def write_cost(runtime_url: str, seconds: float, rounds: int, concurrency: int) -> None:
    pool = await asyncpg.create_pool(runtime_url, min_size=concurrency, max_size=concurrency,
                                     init=db._init_connection)
    seal_pool = await asyncpg.create_pool(runtime_url, min_size=1, max_size=2, init=db._init_connection)
    stop = asyncio.Event()
    sealer = asyncio.create_task(AuditSealer(interval=1.0).run(seal_pool, stop))
    try:
        await intake(pool, 3, concurrency, "record")              # warm-up
        for audited in ("record", "select1"):
            base, audit, costs = [], [], []
            for i in range(rounds):
                order = ("none", audited) if i % 2 == 0 else (audited, "none")
                got = {m: await intake(pool, seconds, concurrency, m) for m in order}
                base.append(got["none"])
                audit.append(got[audited])
                costs.append(100 * (got["none"] - got[audited]) / got["none"])
            print(f"intake at concurrency {concurrency}, audit as {'the audit INSERT + sealer' if audited == 'record' else 'an empty SELECT 1 (for scale)'}:"
                  f" without {statistics.mean(base):,.0f} tx/s, with {statistics.mean(audit):,.0f} tx/s;"
                  f" cost median {statistics.median(costs):.1f} % (pairs: {', '.join(f'{c:.0f}' for c in costs)})",
                  flush=True)
    finally:
        stop.set()
        await sealer
        async with seal_pool.acquire() as c:
            await AuditSealer().seal_once(c)
            pending = await c.fetchval("SELECT count(*) FROM audit_event WHERE id > (SELECT max(sealed_to)"
                                       " FROM audit_seal)")
        print(f"after the run: {pending} event(s) left unsealed")
        await pool.close()
        await seal_pool.close()


async def main(args) -> None:
    tmp = None
    emb = None
    if args.url:
        admin_url = args.url
        runtime_url = args.runtime_url or args.url
    else:
        tmp = Path(tempfile.mkdtemp(prefix="hub-bench-"))
        emb = db.Embedded(tmp)
        await asyncio.to_thread(emb.start)
        admin_url, runtime_url = emb.url("postgres"), emb.url(db.RUNTIME_ROLE)
    try:
        await db.migrate(admin_url, runtime_role=None if args.url else db.RUNTIME_ROLE)
        admin = await asyncpg.connect(admin_url)
        conn = await asyncpg.connect(runtime_url)
        await db._init_connection(conn)
        try:
            if args.events:
                await fill(admin, args.events)
                await seal_all(conn, admin)
                await searches(conn, args.runs)
            if args.seconds:
                await write_cost(runtime_url, args.seconds, args.rounds, args.concurrency)
        finally:
            await admin.close()
            await conn.close()
    finally:
        if emb is not None:
            await asyncio.to_thread(emb.stop, "fast")
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000, help="audit events to fill (0: skip the search part)")
    p.add_argument("--runs", type=int, default=100, help="searches of each kind")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each intake run (0: skip)")
    p.add_argument("--rounds", type=int, default=10, help="pairs of intake runs per variant")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--url", help="admin URL of an existing database (default: embedded, temporary)")
    p.add_argument("--runtime-url", help="runtime-role URL for --url (default: --url)")
    p.add_argument("--relay-pairs", type=int, default=5,
                   help="then the cost on the whole relay: bench/relay.py --audit-cost with this many alternating "
                        "pairs (0: skip)")
    args = p.parse_args()
    asyncio.run(main(args))
    if args.relay_pairs:
        # the figure the issue asks for: audit writes against the throughput of the whole hub (SMTP in, queue,
        # delivery out), measured by the relay bench with the hub's audit writes replaced by a no-op
        import subprocess
        import sys

        subprocess.run([sys.executable, str(Path(__file__).with_name("relay.py")), "--audit-cost", "--sizes", "5",
                        "--concurrency", "50", "--messages", "4000", "--pairs", str(args.relay_pairs)], check=False)
