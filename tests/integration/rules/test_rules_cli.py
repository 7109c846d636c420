"""`hub rules` subcommands against the test database: reload, history, diff, rollback, explain, replay."""

import argparse

from hub.audit.store import Event, record
from hub.rules import cli
from tests.integration.rules.conftest import rule_files, write


def ns(**kw):
    return argparse.Namespace(**kw)


async def test_reload_history_diff_rollback(ctx, rules_dir, capsys):
    assert await cli.cmd_reload(ns(dir=None, actor="alice"), ctx) == 0
    assert "version 1 activated" in capsys.readouterr().out
    assert await cli.cmd_reload(ns(dir=None, actor="alice"), ctx) == 0
    assert "version 1 is current (files unchanged)" in capsys.readouterr().out
    write(rules_dir, rule_files("v2"))
    assert await cli.cmd_reload(ns(dir=None, actor="bob"), ctx) == 0

    assert await cli.cmd_history(ns(limit=10), ctx) == 0
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert lines[0].split()[0] == "2" and "bob" in lines[0] and "reload" in lines[0]
    assert lines[1].split()[0] == "1" and "alice" in lines[1]

    assert await cli.cmd_diff(ns(a="1", b="2", dir=None), ctx) == 0
    out = capsys.readouterr().out
    assert "--- v1/10-accounts.yaml\n+++ v2/10-accounts.yaml\n" in out
    assert "-  - id: v1-r0\n" in out and "+  - id: v2-r0\n" in out and "+  - id: v2-default\n" in out
    assert await cli.cmd_diff(ns(a="2", b="disk", dir=None), ctx) == 0
    assert "identical" in capsys.readouterr().out

    assert await cli.cmd_rollback(ns(version=1, dir=None, actor="carol"), ctx) == 0
    assert "content of version 1 activated as version 3" in capsys.readouterr().out
    assert (rules_dir / "10-accounts.yaml").read_text() == rule_files("v1")["10-accounts.yaml"]

    (rules_dir / "10-accounts.yaml").write_text("rules:\n  - id: a\n    match: {sizes: 1}\n")
    assert await cli.cmd_reload(ns(dir=None, actor="dave"), ctx) == 2
    err = capsys.readouterr().err
    assert f"{rules_dir}/10-accounts.yaml:3:13: unknown matcher 'sizes'" in err


async def test_replay_counts_decisions_that_would_change(ctx, conn, rules_dir, tmp_path, capsys):
    assert await cli.cmd_reload(ns(dir=None, actor="ops"), ctx) == 0           # version 1
    capsys.readouterr()
    routed = [("m1", "acc0", "v1-r0"), ("m2", "acc0", "v1-r0"), ("m3", "acc1", "v1-r1"), ("m4", "zz", "v1-default")]
    await record(conn, *[Event(event="routed", message_id=m, account=a, sender="s@lab.fr", recipient="dr@med.fr",
                               rule_version=1, facts={"rule_id": rule, "content": "pdf", "size": 10, "headers": {}})
                         for m, a, rule in routed])
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    files = rule_files("v1")
    files["10-accounts.yaml"] = files["10-accounts.yaml"].replace(
        "  - id: v1-r0\n    match: {account: acc0}\n",
        "  - id: v1-r0\n    match: {account: acc0}\n    then: {hold: new policy}\n").replace(
        "  - id: v1-r1\n    match: {account: acc1}\n", "  - id: v1-r1b\n    match: {account: acc1}\n")
    write(candidate, files)
    assert await cli.cmd_replay(ns(dir=str(candidate), since="7d"), ctx) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("replayed 4 routing decisions since ")
    assert out[0].endswith(": 1 unchanged, 3 would change")
    assert out[1].split() == ["2", "v1-r0:", "same", "rule,", "actions", "changed", "(deliver", "->", "hold",
                              "(new", "policy))", "e.g.", "m1,", "m2"]
    assert out[2].split() == ["1", "v1-r1", "->", "v1-r1b", "e.g.", "m3"]


async def test_explain_uses_the_active_version_or_a_directory(ctx, rules_dir, tmp_path, capsys):
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: s@lab.fr\r\nTo: dr@med.fr\r\nContent-Type: application/pdf\r\n"
                        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjcK\r\n")
    args = ns(message=str(message), account="acc1", rcpt=[], mail_from=None, kind=None, at=None, dir=None)
    assert await cli.cmd_explain(args, ctx) == 0         # nothing activated yet: the files of rules.dir
    out = capsys.readouterr().out
    assert "content: pdf" in out and "rule: v1-r1 (10-accounts.yaml:4)" in out
    assert "    - v1-r0 (10-accounts.yaml:2): account: 'acc1' is not 'acc0'" in out
    assert "recipient dr@med.fr:\n  resolution: unresolved (directory)" in out
    (tmp_path / "other").mkdir()
    write(tmp_path / "other", rule_files("other"))
    args.dir, args.kind = str(tmp_path / "other"), "practitioner"
    assert await cli.cmd_explain(args, ctx) == 0
    out = capsys.readouterr().out
    assert "rule: other-r1" in out and "resolution: practitioner (given on the command line)" in out
    assert "final envelope: MAIL FROM:<s@lab.fr> RCPT TO:<dr@med.fr>" in out
