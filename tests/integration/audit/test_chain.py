"""Sealing and verification against a real PostgreSQL, with tampering made by a superuser."""

import asyncio

import asyncpg
import pytest

from hub.audit.chain import AuditSealer, verify
from hub.audit.store import Event, record, timeline
from tests.integration.audit.conftest import story


async def test_events_are_sealed_and_verify(conn, sealer):
    await story(conn, "m1", ins="277076322082910", doc_type="11502-2")
    await story(conn, "m2", recipients=("a@x.fr", "b@y.fr"), outcome="bounced")
    assert await sealer.seal_once(conn) == len(await conn.fetch("SELECT 1 FROM audit_event"))
    assert await sealer.seal_once(conn) == 0
    report = await verify(conn)
    assert report.ok, report.lines()
    assert report.events == await conn.fetchval("SELECT count(*) FROM audit_event")
    assert report.pending == 0 and report.head_seq >= 1


async def test_timeline_is_in_order_with_facts(conn):
    await story(conn, "m1", recipients=("a@x.fr",))
    events = await timeline(conn, "m1")
    assert [e["event"] for e in events] == ["received", "routed", "delivery_attempted", "delivered"]
    assert events[0]["facts"]["recipients"] == ["a@x.fr"]
    assert events[1]["rule_version"] == 1 and events[1]["facts"]["rule_id"] == "default"


async def _tamper(admin, sql, *args):
    async with admin.transaction():
        await admin.execute("SET LOCAL session_replication_role = replica")
        await admin.execute(sql, *args)


async def test_an_edited_event_is_reported_first(conn, admin, sealer):
    for i in range(5):
        await story(conn, f"m{i}")
    await sealer.seal_once(conn)
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM audit_event ORDER BY id")]
    target, later = ids[7], ids[12]
    await _tamper(admin, "UPDATE audit_event SET facts = '{\"reply\": \"550 forged\"}' WHERE id = ANY($1)",
                  [target, later])
    report = await verify(conn)
    assert not report.ok
    assert report.problems == 2
    assert report.first_problem.kind == "altered" and report.first_problem.event_id == target
    assert "FAILED" in report.lines()[-1]


async def test_a_deleted_event_is_reported(conn, admin, sealer):
    for i in range(3):
        await story(conn, f"m{i}")
    await sealer.seal_once(conn)
    victim = await conn.fetchval("SELECT id FROM audit_event WHERE message_id = 'm1' AND event = 'delivered'")
    await _tamper(admin, "DELETE FROM audit_event WHERE id = $1", victim)
    report = await verify(conn)
    assert (report.first_problem.kind, report.first_problem.event_id) == ("missing", victim)


async def test_an_event_inserted_behind_the_chain_is_reported(conn, admin, sealer):
    await story(conn, "m1")
    await sealer.seal_once(conn)
    low = await conn.fetchval("SELECT min(id) FROM audit_event")
    await admin.execute("SELECT setval('audit_event_id_seq', 1000)")
    # a forged event slipped under the chain with an explicit, already sealed, id (a rolled-back id's place)
    await admin.execute("INSERT INTO audit_event (id, event, message_id) VALUES ($1, 'delivered', 'm1')", low - 1
                        if low > 1 else 0)
    report = await verify(conn)
    assert report.first_problem.kind == "unsealed"
    assert "inserted behind the chain" in str(report.first_problem)


async def test_a_removed_seal_block_breaks_the_chain(conn, admin, sealer):
    await story(conn, "m1")
    await sealer.seal_once(conn)
    await story(conn, "m2")
    await sealer.seal_once(conn)
    await story(conn, "m3")
    await sealer.seal_once(conn)
    await _tamper(admin, "DELETE FROM audit_seal WHERE seq = 2")
    report = await verify(conn)
    assert report.first_problem.kind in ("chain_broken", "unsealed")
    assert {"chain_broken", "unsealed"} >= {report.first_problem.kind}
    assert not report.ok


async def test_verify_since_checks_only_recent_blocks(conn, admin, sealer):
    await story(conn, "old")
    await sealer.seal_once(conn)
    cut = await conn.fetchval("SELECT clock_timestamp()")
    await story(conn, "new")
    await sealer.seal_once(conn)
    old_id = await conn.fetchval("SELECT min(id) FROM audit_event WHERE message_id = 'old'")
    await _tamper(admin, "UPDATE audit_event SET event = 'forged' WHERE id = $1", old_id)
    assert (await verify(conn, cut)).ok
    assert not (await verify(conn)).ok


async def test_an_uncommitted_event_holds_the_horizon(database, conn):
    """An id handed out to a transaction still running is not sealed past; events after it wait too."""
    slow = await asyncpg.connect(database.runtime_url)
    try:
        tx = slow.transaction()
        await tx.start()
        await record(slow, Event("received", message_id="slow"))
        await record(conn, Event("received", message_id="fast"))
        sealer = AuditSealer(max_wait=0.2)
        assert await sealer.seal_once(conn) == 0                  # waited for `slow`, gave up
        await tx.commit()
    finally:
        await slow.close()
    assert await AuditSealer().seal_once(conn) == 2
    assert (await verify(conn)).ok


async def test_the_sealer_task_seals_and_stops(pool, conn):
    await record(conn, Event("received", message_id="m"))
    stop = asyncio.Event()
    task = asyncio.create_task(AuditSealer(interval=0.05).run(pool, stop))
    for _ in range(200):
        if await conn.fetchval("SELECT count(*) FROM audit_seal"):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await conn.fetchval("SELECT sum(n) FROM audit_seal") == 1


async def test_the_runtime_role_and_the_owner_cannot_rewrite(conn, admin, sealer, pg_cluster):
    await story(conn, "m1")
    await sealer.seal_once(conn)
    for table in ("audit_event", "audit_message_key", "audit_seal"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin.execute(f"DELETE FROM {table}")                  # the owner: refused by the trigger
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await admin.execute("UPDATE audit_event SET event = 'x'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await admin.execute("TRUNCATE audit_seal")
    if pg_cluster.runtime_user is not None:
        for sql in ("UPDATE audit_seal SET n = 0", "DELETE FROM audit_purge", "DELETE FROM audit_message_key"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    assert (await verify(conn)).ok

