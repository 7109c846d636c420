"""Explain (pure parts), the temporary detector, replay facts, and `hub rules check` without a database."""

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub.rules import cli
from hub.rules.explain import explain_message, facts_from_event, parse_since, routing, temporary_detect
from hub.settings import RulesSection, Settings

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2024, 5, 15, 10, 0, tzinfo=timezone.utc)
HPRIM = (b"From: Labo Bioxa <resultats@labo-bioxa.mssante.fr>\r\nTo: dr.a@med.mssante.fr, Dr B <dr.b@med.mssante.fr>"
         b"\r\nSubject: results\r\nX-Hub-Test: no\r\nContent-Type: text/plain\r\n\r\nH|~^\\&|||LABO\r\nP|1\r\n")


def test_routing_outcomes(rules, make_facts):
    rs = rules("""
        rules:
          - id: fb
            match: {account: fb}
            then: {fallback: {mailbox: sec@lab.fr}, copy_to: arch@lab.fr}
          - id: rej
            match: {account: rej}
            then: {reject: {code: 553, enhanced: 5.1.7, text: no}}
          - id: held
            match: {account: held}
            then: {hold: check, copy_to: other@x.fr}
    """)
    d = rs.evaluate(make_facts(account="fb", recipient_kind="unresolved"))
    assert routing(d, "dr@x.fr", recipient_kind="unresolved") == (
        "unresolved, sent to the fallback mailbox", ["sec@lab.fr", "arch@lab.fr"])
    assert routing(d, "dr@x.fr", resolved="dr@y.fr", recipient_kind="practitioner") == (
        "delivered", ["dr@y.fr", "arch@lab.fr"])
    d = rs.evaluate(make_facts(account="rej"))
    assert routing(d, "dr@x.fr") == ("rejected at RCPT time: 553 5.1.7 no", [])
    d = rs.evaluate(make_facts(account="held"))
    assert routing(d, "dr@x.fr") == ("held for manual release (check); then delivered", ["dr@x.fr", "other@x.fr"])


def test_routing_default_rule_without_fallback(rules, make_facts):
    d = rules("rules:\n  - id: a\n    match: {account: a}\n").evaluate(make_facts(account="zz"))
    assert routing(d, "u@x.fr", recipient_kind="unresolved")[0].startswith("unresolved: setting directory.unresolved")


async def test_explain_message_lists_recipients_rules_and_envelope():
    from hub.rules.loader import FALLBACK_TRANSFORMS, compile_files, read_dir

    rs = compile_files(read_dir(ROOT / "routing_rules"), FALLBACK_TRANSFORMS)

    async def resolver(address):
        return ("unresolved", None) if address.startswith("dr.b") else ("practitioner", address)

    lines = await explain_message(rs, HPRIM, account="labo-bioxa", now=NOW, detector=temporary_detect,
                                  resolver=resolver)
    text = "\n".join(lines)
    assert "content: hprim_sante" in text
    assert "recipient dr.a@med.mssante.fr:\n  resolution: practitioner (directory) -> dr.a@med.mssante.fr" in text
    assert "  rule: bioxa-hprim (10-labo-bioxa.yaml:7), decidable at DATA time" in text
    assert ("    - interface-tests-to-sandbox (00-defaults.yaml:7): account: 'labo-bioxa' is not one of "
            "'recette-editeur-a', 'recette-editeur-b'") in text
    assert "  transform: hprim_to_cda_xdm {'chapter': '18719-5'}" in text
    assert ("  final envelope: MAIL FROM:<resultats@labo-bioxa.mssante.fr> RCPT TO:<dr.a@med.mssante.fr>, "
            "<archives@labo-bioxa.mssante.fr>") in text
    assert ("recipient dr.b@med.mssante.fr:\n  resolution: unresolved (directory)\n" in text)
    assert "RCPT TO:<secretariat@labo-bioxa.mssante.fr>, <archives@labo-bioxa.mssante.fr>" in text


async def test_explain_without_directory_or_detector(rules):
    rs = rules("rules:\n  - id: pdf\n    match: {content: pdf}\n")
    lines = await explain_message(rs, HPRIM, account="x", rcpts=["a@b.fr"], now=NOW)
    assert "  resolution: not resolved (no directory)" in lines
    assert lines[1].endswith("content: unknown; doc_code: -")
    assert "  rule: default (99-catch-all.yaml:2), decidable at DATA time" in lines


@pytest.mark.parametrize("body,expected", [
    (b"%PDF-1.7 ...", ("pdf", None)),
    (b"MSH|^~\\&|LIS|LAB|||20240101||ORU^R01|1|P|2.5\r", ("hl7_oru", None)),
    (b"MSH|^~\\&|DPI|CH|||20240101||MDM^T02|1|P|2.6\r", ("hl7_mdm", None)),
    (b"<?xml version='1.0'?><ClinicalDocument><code code=\"11490-0\"/></ClinicalDocument>", ("cda", "11490-0")),
    (b"****LAB****\r\nresults", ("hprim_net", None)),
    (b"hello", ("other", None)),
])
def test_temporary_detector(body, expected):
    assert temporary_detect(b"Content-Type: text/plain\r\n\r\n" + body) == expected


def test_parse_since():
    assert parse_since("7d") == timedelta(days=7) and parse_since("12h") == timedelta(hours=12)
    assert parse_since("2w") == timedelta(weeks=2) and parse_since("3") == timedelta(days=3)
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_facts_from_a_routed_event():
    f = facts_from_event({"at": NOW, "account": None, "m_account": "labo", "sender": "s@l.fr", "recipient": "r@x.fr",
                          "m_mail_from": "ignored@l.fr", "m_size": 99,
                          "facts": {"rule_id": "a", "content": "pdf", "recipient_kind": "practitioner",
                                    "headers": {"X-Hub-Test": "yes", "Subject": None}}})
    assert (f.account, f.mail_from, f.rcpt, f.content, f.recipient_kind, f.size, f.now) == (
        "labo", "s@l.fr", "r@x.fr", "pdf", "practitioner", 99, NOW)
    assert dict(f.headers) == {"x-hub-test": "yes"}


def _ctx(tmp_path):
    return argparse.Namespace(settings=Settings(rules=RulesSection(dir=str(tmp_path))))


def test_check_reports_every_error_with_location_and_exits_2(tmp_path, capsys):
    (tmp_path / "10-a.yaml").write_text("rules:\n  - id: a\n    match: {account: [x}\n")
    (tmp_path / "20-b.yaml").write_text("rules:\n  - id: b\n    then: {transform: nope}\n")
    assert cli.cmd_check(argparse.Namespace(dir=None), _ctx(tmp_path)) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{tmp_path}/10-a.yaml:3:") and "YAML syntax" in err[0]
    assert err[1].startswith(f"{tmp_path}/20-b.yaml:3:23: transform: unknown chain 'nope'")
    assert err[-1] == "2 error(s): the rule set was not activated"


def test_check_accepts_the_shipped_rules(capsys, tmp_path):
    assert cli.cmd_check(argparse.Namespace(dir=str(ROOT / "routing_rules")), _ctx(tmp_path)) == 0
    assert "ok, 16 rules in 5 files" in capsys.readouterr().out


def test_check_is_registered_as_a_synchronous_command():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["rules", "check", "somewhere"])
    assert args.sync is True and args.run is cli.cmd_check and args.dir == "somewhere"
    for action in ("history", "diff 1 2", "rollback 3", "reload", "explain m.eml --account a", "replay --since 1d"):
        args = parser.parse_args(["rules", *action.split()])
        assert not getattr(args, "sync", False)
