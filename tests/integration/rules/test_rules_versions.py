"""Versions in PostgreSQL: activation, idempotence, audit, NOTIFY, reload keeping the last good set, rollback."""

import asyncio

import pytest

from hub.rules import store
from hub.rules.loader import FALLBACK_TRANSFORMS
from hub.rules.service import RulesService, rollback
from tests.integration.rules.conftest import FakeGauge, rule_files, write

pytestmark = pytest.mark.asyncio


async def test_activate_stores_versions_once_per_content_with_audit_and_notify(conn, database):
    import asyncpg

    listener = await asyncpg.connect(database.runtime_url)
    heard: asyncio.Queue = asyncio.Queue()
    await listener.add_listener(store.CHANNEL, lambda *args: heard.put_nowait(args[-1]))
    try:
        assert await store.current_version(conn) is None
        assert await store.activate(conn, rule_files("a"), actor="alice") == (1, True)
        assert await store.activate(conn, rule_files("a"), actor="bob") == (1, False)
        assert await store.activate(conn, rule_files("b"), actor="bob") == (2, True)
        assert await asyncio.wait_for(heard.get(), 20) == "1"
        assert await asyncio.wait_for(heard.get(), 20) == "2"
    finally:
        await listener.close()
    v1, v2 = await store.get(conn, 1), await store.get(conn)
    assert v1.files == rule_files("a") and v1.activated_by == "alice" and v2.version == 2
    assert [v.version for v in await store.history(conn)] == [2, 1]
    events = await conn.fetch("SELECT rule_version, facts FROM audit_event WHERE event = 'rules_activated' "
                              "ORDER BY id")
    assert [e["rule_version"] for e in events] == [1, 2]
    assert events[1]["facts"]["previous_version"] == 1 and events[1]["facts"]["actor"] == "bob"
    assert events[1]["facts"]["files"] == ["10-accounts.yaml", "99-catch-all.yaml"]


async def test_reload_activates_valid_files_and_keeps_the_last_good_set(conn, rules_dir, rules_settings):
    versions, errors = FakeGauge(), FakeGauge()
    svc = RulesService(rules_settings, FALLBACK_TRANSFORMS, version_gauge=versions, error_gauge=errors)
    result = await svc.reload(conn, actor="test")
    assert (result.ok, result.created, result.version) == (True, True, 1)
    good = svc.current
    assert good.version == 1 and good.rules[0].id == "v1-r0" and versions.value == 1

    (rules_dir / "10-accounts.yaml").write_text("rules:\n  - id: x\n    match: {account: [a}\n")
    (rules_dir / "20-more.yaml").write_text("rules:\n  - id: y\n    match: {account: y}\n    then: {transform: unknown}\n")
    result = await svc.reload(conn, actor="test")
    assert not result.ok and result.version == 1 and not result.changed
    assert [f"{e.file}:{e.line}" for e in result.errors] == ["10-accounts.yaml:3", "20-more.yaml:4"]
    assert svc.current is good and errors.value == 1
    assert svc.last_error.startswith(f"{rules_dir}: 10-accounts.yaml:3:")
    assert svc.status()["last_error"] == svc.last_error and svc.status()["version"] == 1
    assert await store.current_version(conn) == 1          # an invalid set is never stored

    (rules_dir / "20-more.yaml").unlink()
    write(rules_dir, rule_files("v2"))
    result = await svc.reload(conn, actor="test")
    assert (result.ok, result.created, result.version) == (True, True, 2)
    assert svc.current.rules[0].id == "v2-r0" and svc.last_error is None and errors.value == 0
    # same files again: no new version
    assert (await svc.reload(conn, actor="test")).created is False


async def test_start_falls_back_to_the_database_when_the_files_are_broken(conn, rules_dir, rules_settings):
    await store.activate(conn, rule_files("stored"), actor="earlier")
    (rules_dir / "10-accounts.yaml").write_text("rules: [")
    svc = RulesService(rules_settings, FALLBACK_TRANSFORMS)
    rs = await svc.start(conn)
    assert rs.version == 1 and rs.rules[0].id == "stored-r0" and svc.last_error


async def test_other_processes_pick_up_a_new_version(conn, rules_settings):
    a = RulesService(rules_settings, FALLBACK_TRANSFORMS)
    b = RulesService(rules_settings, FALLBACK_TRANSFORMS)
    await a.start(conn)
    await b.start(conn)
    assert a.current.version == b.current.version == 1
    await store.activate(conn, rule_files("cli"), actor="cli")     # what `hub rules reload` does
    assert await b.refresh(conn) is True
    assert b.current.version == 2 and b.current.rules[0].id == "cli-r0"
    assert await b.refresh(conn) is False


async def test_rollback_activates_old_content_as_a_new_version_and_writes_the_files(conn, rules_dir, rules_settings):
    svc = RulesService(rules_settings, FALLBACK_TRANSFORMS)
    await svc.reload(conn, actor="t")                               # v1
    v2_files = {**rule_files("v2"), "50-extra.yaml": "rules:\n  - id: extra\n    match: {account: e}\n"}
    write(rules_dir, v2_files)
    await svc.reload(conn, actor="t")                               # v2
    (rules_dir / "README.md").write_text("kept")
    assert await rollback(conn, 1, rules_dir, FALLBACK_TRANSFORMS, actor="ops") == (3, True)
    stored = await store.get(conn, 3)
    assert stored.files == rule_files("v1") and stored.reason == "rollback" and stored.rollback_of == 1
    assert sorted(p.name for p in rules_dir.iterdir()) == ["10-accounts.yaml", "99-catch-all.yaml", "README.md"]
    assert (rules_dir / "10-accounts.yaml").read_text() == rule_files("v1")["10-accounts.yaml"]
    # the process's own watcher sees the rewritten files: reloading them creates nothing new
    result = await svc.reload(conn, actor="watch")
    assert (result.created, result.version, svc.current.rules[0].id) == (False, 3, "v1-r0")
    event = await conn.fetchrow("SELECT facts FROM audit_event WHERE rule_version = 3")
    assert event["facts"]["reason"] == "rollback" and event["facts"]["rollback_of"] == 1


async def test_rollback_refuses_unknown_versions(conn, rules_dir):
    from hub.errors import ConfigError

    with pytest.raises(ConfigError):
        await rollback(conn, 9, rules_dir, FALLBACK_TRANSFORMS, actor="ops")
