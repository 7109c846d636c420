"""Retention: old months dropped whole, bodies purged, purges audited, the chain still verified across a purge."""

import datetime as dt
import json

import asyncpg
import pytest

from hub.audit import retention
from hub.audit.chain import verify
from hub.audit.store import Event, record
from hub.settings import AuditSection, Settings
from tests.integration.audit.conftest import story


def months_ago(n: int) -> dt.datetime:
    today = dt.datetime.now(dt.timezone.utc).replace(day=15, hour=12, minute=0, second=0, microsecond=0)
    for _ in range(n):
        today = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=15)
    return today


async def old_events(admin, at: dt.datetime, mid: str, n: int = 3) -> None:
    """Events written long ago (the admin sets `at`, which the hub never does), with their search keys."""
    await admin.execute("SELECT audit_ensure_partition($1)", at.date())
    for i in range(n):
        await admin.execute("INSERT INTO audit_event (at, message_id, event, account) VALUES ($1, $2, $3, 'ch-a')",
                            at + dt.timedelta(seconds=i), mid, "received" if i == 0 else "delivered")
    await admin.execute("INSERT INTO audit_message_key VALUES ('*', '', $1, $2)", at, mid)


async def test_expired_months_are_dropped_and_the_chain_still_verifies(conn, admin, sealer):
    await old_events(admin, months_ago(9), "ancient")
    await old_events(admin, months_ago(8), "old")
    await sealer.seal_once(conn)
    await story(conn, "recent")                  # interleaves: a block of this month after the old ones
    await sealer.seal_once(conn)
    await old_events(admin, months_ago(8), "old-late", n=1)     # sealed after "recent": its block sits between
    await sealer.seal_once(conn)
    await story(conn, "recent2")
    await sealer.seal_once(conn)
    assert (await verify(conn)).ok
    settings = Settings(audit=AuditSection(event_retention_days=183, body_retention_days=30))
    result = await retention.purge(conn, settings)
    assert [m["month"] for m in result.months] == [months_ago(9).strftime("%Y-%m"), months_ago(8).strftime("%Y-%m")]
    assert [m["events"] for m in result.months] == [3, 4]
    parts = {r["relname"] for r in await conn.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'audit_event_y%'")}
    assert f"audit_event_{months_ago(9):y%Ym%m}" not in parts
    assert await conn.fetchval("SELECT count(*) FROM audit_event WHERE message_id IN ('ancient', 'old', 'old-late')") == 0
    purged = [json.loads(r["facts"]) for r in await conn.fetch(
        "SELECT facts::text AS facts FROM audit_event WHERE event = 'purged' ORDER BY id")]
    assert [p["events"] for p in purged if p["scope"] == "events"] == [3, 4]
    await story(conn, "after")
    await retention.purge(conn, settings)            # nothing more to drop
    await sealer.seal_once(conn)
    report = await verify(conn)
    assert report.ok, report.lines()
    assert [p["month"] for p in report.purges] == [months_ago(9).strftime("%Y-%m"), months_ago(8).strftime("%Y-%m")]
    assert any("purged on" in line for line in report.lines())


async def test_tampering_is_still_found_after_a_purge(conn, admin, sealer):
    await old_events(admin, months_ago(8), "old")
    await story(conn, "recent")
    await sealer.seal_once(conn)
    await retention.drop_expired(conn, 183)
    victim = await conn.fetchval("SELECT min(id) FROM audit_event WHERE message_id = 'recent'")
    async with admin.transaction():
        await admin.execute("SET LOCAL session_replication_role = replica")
        await admin.execute("DELETE FROM audit_event WHERE id = $1", victim)
    report = await verify(conn)
    assert (report.first_problem.kind, report.first_problem.event_id) == ("missing", victim)


async def test_a_retention_below_the_floor_is_refused(conn):
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await retention.drop_expired(conn, 1)


async def test_bodies_of_final_messages_are_purged_and_audited(conn):
    await conn.execute(
        "INSERT INTO message (id, mail_from, state, size, body, finished_at) VALUES"
        " ('done-old', 'a@b', 'done', 3, 'abc', now() - interval '40 days'),"
        " ('done-new', 'a@b', 'done', 3, 'abc', now() - interval '2 days'),"
        " ('queued', 'a@b', 'queued', 3, 'abc', NULL)")
    assert await retention.purge_bodies(conn, 30) == 1
    rows = {r["id"]: (r["body"], r["body_purged_at"]) for r in await conn.fetch("SELECT * FROM message")}
    assert rows["done-old"][0] is None and rows["done-old"][1] is not None
    assert rows["done-new"][0] == b"abc" and rows["queued"][0] == b"abc"
    facts = json.loads(await conn.fetchval("SELECT facts::text FROM audit_event WHERE event = 'purged'"))
    assert facts["scope"] == "bodies" and facts["messages"] == 1
    assert await retention.purge_bodies(conn, 30) == 0


async def test_partitions_are_created_ahead_and_late_rows_move_in(conn, admin):
    far = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=200)
    await admin.execute("INSERT INTO audit_event (at, event) VALUES ($1, 'early')", far)
    assert await admin.fetchval("SELECT tableoid::regclass::text FROM audit_event WHERE event = 'early'") \
        == "audit_event_default"
    assert await conn.fetchval("SELECT audit_ensure_partition($1)", far.date())       # the runtime role may
    assert await admin.fetchval("SELECT tableoid::regclass::text FROM audit_event WHERE event = 'early'") \
        == f"audit_event_{far:y%Ym%m}"
    assert await retention.ensure_partitions(conn, 2) == 0       # this month and the next two exist already


async def test_the_retention_loop_runs_and_stops(pool, conn):
    import asyncio

    await record(conn, Event("received", message_id="m"))
    stop = asyncio.Event()
    settings = Settings(audit=AuditSection(purge_interval=0.05))
    task = asyncio.create_task(retention.retention_loop(pool, settings, stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await conn.fetchval("SELECT count(*) FROM audit_event") == 1
