"""Hot reload: the watcher, other processes' versions, and atomic switching under load."""

import asyncio

from hub import db
from hub.rules import store
from hub.rules.engine import Facts
from hub.rules.loader import FALLBACK_TRANSFORMS, compile_files
from hub.rules.service import RulesService
from hub.settings import Settings
from tests.integration.rules.conftest import rule_files, until, write


async def test_the_watcher_reloads_changed_files_keeps_the_last_good_and_follows_the_database(
        conn, database, rules_dir, rules_settings):
    svc = RulesService(rules_settings, FALLBACK_TRANSFORMS)
    await svc.start(conn)
    pool = await db.create_pool(database.runtime_url, Settings(), min_size=1, max_size=2)
    task = asyncio.create_task(svc.watch(pool))
    try:
        write(rules_dir, rule_files("second-version"))
        await until(lambda: svc.current.version == 2, "the watcher activates the edited files")
        assert svc.current.rules[0].id == "second-version-r0"

        (rules_dir / "10-accounts.yaml").write_text("rules:\n  - id: broken\n    match: {account: [x}\n")
        await until(lambda: svc.last_error is not None, "the watcher reports the broken file")
        assert "10-accounts.yaml:3:" in svc.last_error
        assert svc.current.version == 2 and await store.current_version(conn) == 2

        await store.activate(conn, rule_files("from-elsewhere"), actor="cli")
        await until(lambda: svc.current.version == 3, "the watcher picks up another process's version")
        assert svc.current.rules[0].id == "from-elsewhere-r0"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()


async def test_every_evaluation_runs_under_exactly_one_version(conn, rules_dir, rules_settings):
    svc = RulesService(rules_settings, FALLBACK_TRANSFORMS)
    await svc.start(conn)
    messages = [[Facts(f"acc{i}", "s@lab.fr", f"dr{j}@med.fr") for j in range(3)] for i in range(5)]
    seen: list[tuple[int, list]] = []
    done = asyncio.Event()

    async def intake():
        n = 0
        while not done.is_set():
            rs = svc.current                                 # once per message
            decisions = [rs.evaluate(f) for f in messages[n % len(messages)]]
            seen.append((n % len(messages), decisions))
            n += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(intake())
    for generation in range(2, 12):
        write(rules_dir, rule_files(f"g{generation}", accounts=2 + generation % 3))
        assert (await svc.reload(conn, actor="test")).created
        await asyncio.sleep(0)
    done.set()
    await task

    expected = {}
    for v in await store.history(conn):
        rs = compile_files(v.files, FALLBACK_TRANSFORMS)
        expected[v.version] = [[rs.evaluate(f).rule_id for f in m] for m in messages]
    versions_seen = set()
    for index, decisions in seen:
        versions = {d.version for d in decisions}
        assert len(versions) == 1, decisions                 # one message, one version
        (version,) = versions
        versions_seen.add(version)
        assert [d.rule_id for d in decisions] == expected[version][index]
    assert len(versions_seen) > 1
