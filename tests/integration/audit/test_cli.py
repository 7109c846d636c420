"""`hub audit ...` and `hub tokens ...` against a real database."""

import argparse
import csv
import io
import json
import os

import pytest

from hub.audit import cli as audit_cli
from hub.audit.patient import load_patient_key, patient_key
from hub.audit.chain import AuditSealer
from hub.audit.store import Event, record
from hub.cli import Context
from hub.errors import InputError
from hub.settings import AuditSection, DatabaseSection, HubSection, Settings
from tests.integration.audit.conftest import story

INS = "277076322082910"


@pytest.fixture
def run(database, tmp_path, capsys):
    settings = Settings(hub=HubSection(data_dir=str(tmp_path)), database=DatabaseSection(url=database.runtime_url),
                        audit=AuditSection(event_retention_days=183))
    parser = argparse.ArgumentParser(prog="hub")
    sub = parser.add_subparsers(dest="command")
    audit_cli.register(sub)

    async def run(*argv: str) -> tuple[int, str]:
        ctx = Context(settings)
        ctx._migrated = True
        args = parser.parse_args(argv)
        capsys.readouterr()
        code = await args.run(args, ctx)
        return code, capsys.readouterr().out
    run.settings = settings
    return run


async def test_search_formats_timeline_and_audit_of_queries(run, conn):
    key = load_patient_key(run.settings)          # created 0600 under data_dir
    assert os.stat(run.settings.data_dir / "audit.key").st_mode & 0o777 == 0o600
    await story(conn, "m1", ins=INS, doc_type="11502-2", key=key)
    await story(conn, "m2", account="ch-b", sender="x@ch-b.example")
    code, out = await run("audit", "search", "--patient-ins", INS)
    assert code == 0 and "m1" in out and "m2" not in out and "11502-2" in out
    code, out = await run("audit", "search", "--format", "json", "--account", "ch-b")
    assert [m["message_id"] for m in json.loads(out)["messages"]] == ["m2"]
    code, out = await run("audit", "search", "--format", "csv", "--limit", "1")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:2] == ["received_at", "message_id"] and rows[1][1] == "m2" and len(rows) == 2
    code, out = await run("audit", "search", "--limit", "1")
    assert "more: --cursor " in out
    cursor = out.split("--cursor ")[1].split()[0]
    code, out = await run("audit", "search", "--cursor", cursor)
    assert "m1" in out and "m2" not in out
    code, out = await run("audit", "timeline", "m1")
    names = [line.split()[2] for line in out.splitlines()[2:]]
    assert code == 0 and names == ["received", "routed", "transformed", "delivery_attempted", "delivered"]
    assert "rule_version=1" in out
    with pytest.raises(InputError):
        await run("audit", "timeline", "unknown")
    logged = [json.loads(r["f"]) for r in await conn.fetch(
        "SELECT facts::text AS f FROM audit_event WHERE event = 'audit_searched' ORDER BY id")]
    assert len(logged) == 7
    assert logged[0]["filters"] == {"patient_key": patient_key(INS, key).hex()} and logged[0]["via"] == "cli"


async def test_verify_seals_then_checks_and_fails_on_tampering(run, conn, admin):
    await story(conn, "m1")
    code, out = await run("audit", "verify")
    assert code == 0 and "OK" in out
    async with admin.transaction():
        await admin.execute("SET LOCAL session_replication_role = replica")
        victim = await admin.fetchval("UPDATE audit_event SET recipient = 'evil@x.fr'"
                                      " WHERE event = 'delivered' RETURNING id")
    code, out = await run("audit", "verify", "--since", "2020-01-01")
    assert code == 1 and f"event {victim}: altered" in out


async def test_purge_command(run, conn):
    await conn.execute("INSERT INTO message (id, mail_from, state, size, body, finished_at)"
                       " VALUES ('x', 'a@b', 'done', 1, 'a', now() - interval '90 days')")
    code, out = await run("audit", "purge")
    assert code == 0 and "bodies purged: 1" in out
    assert (await conn.fetchval("SELECT actor FROM audit_event WHERE event = 'purged'")).startswith("cli")


async def test_tokens_add_list_revoke(run, conn):
    code, out = await run("tokens", "add", "alice", "--role", "auditor", "--account", "ch-a")
    secret = out.strip()
    assert code == 0 and secret.startswith("hub_") and len(secret) > 40
    stored = await conn.fetchval("SELECT token_hash FROM api_token WHERE name = 'alice'")
    assert secret.encode() not in stored and len(stored) == 32
    with pytest.raises(InputError):
        await run("tokens", "add", "alice", "--role", "auditor")
    with pytest.raises(InputError):
        await run("tokens", "add", "bob", "--role", "operator", "--account", "ch-a")
    code, out = await run("tokens", "list")
    assert "alice" in out and "ch-a" in out and secret not in out
    code, out = await run("tokens", "revoke", "alice")
    assert code == 0
    with pytest.raises(InputError):
        await run("tokens", "revoke", "alice")
    events = [r["event"] for r in await conn.fetch("SELECT event FROM audit_event ORDER BY id")]
    assert events == ["token_created", "token_revoked"]


async def test_searched_events_are_never_linked_to_a_message(conn):
    await record(conn, Event("audit_searched", actor="x", facts={"filters": {}}))
    assert await AuditSealer().seal_once(conn) == 1
    assert await conn.fetchval("SELECT count(*) FROM audit_message_key") == 0
