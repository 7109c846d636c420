"""The engine: first match wins, RCPT-time decisions, explanations, and the account index changes nothing."""

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rules.engine import Decision, Facts, RuleSet, data_reply
from hub.rules.loader import FALLBACK_TRANSFORMS, compile_files

SET = """
rules:
  - id: bad-sender
    match: {mail_from: "*@*.local"}
    then: {reject: {code: 553, enhanced: 5.1.7, text: bad sender}}
  - id: labo-hprim
    match: {account: labo, content: hprim_sante}
    then: {transform: hprim_to_cda_xdm}
  - id: labo-unresolved
    match: {account: labo, recipient_kind: unresolved}
    then: {fallback: reject}
  - id: big
    match: {size: {min: 1MB}}
    then: {hold: big}
"""


def test_first_match_wins_and_the_catch_all_ends(rules, make_facts):
    rs = rules(SET)
    assert rs.evaluate(make_facts(mail_from="x@pc.local", account="labo", content="hprim_sante")).rule_id \
        == "bad-sender"
    assert rs.evaluate(make_facts(account="labo", content="hprim_sante", recipient_kind="unresolved")).rule_id \
        == "labo-hprim"
    assert rs.evaluate(make_facts(account="labo", content="pdf", recipient_kind="unresolved")).rule_id \
        == "labo-unresolved"
    assert rs.evaluate(make_facts(account="ch", size=2_000_000)).rule_id == "big"
    assert rs.evaluate(make_facts(account="ch", size=10)).rule_id == "default"


def test_stage_and_rcpt_time_evaluation(rules, make_facts):
    rs = rules(SET)
    assert rs.needs_content
    bad = make_facts(mail_from="x@pc.local")
    assert rs.evaluate_rcpt(bad).rule_id == "bad-sender"
    assert rs.evaluate(bad).stage == "rcpt"
    # labo-hprim needs the content: nothing decidable at RCPT time for labo, and the later rule is "data" stage
    labo = make_facts(account="labo", recipient_kind="unresolved")
    assert rs.evaluate_rcpt(labo) is None
    d = rs.evaluate(Facts(**{**_kw(labo), "content": "pdf"}))
    assert (d.rule_id, d.stage) == ("labo-unresolved", "data")
    # for another account the labo rules are skipped, but `big` still needs the size
    assert rs.evaluate_rcpt(make_facts(account="ch")) is None


def test_rcpt_time_when_no_content_rule_can_match(rules, make_facts):
    rs = rules("rules:\n  - id: a\n    match: {account: a}\n  - id: b\n    match: {account: b, content: pdf}\n")
    d = rs.evaluate_rcpt(make_facts(account="c", content="pdf"))
    assert (d.rule_id, d.stage) == ("default", "rcpt")
    assert rs.evaluate(make_facts(account="c")).stage == "rcpt"
    assert rs.evaluate(make_facts(account="b", content="cda")).stage == "data"
    assert rs.evaluate_rcpt(make_facts(account="b")) is None


def test_decisions_carry_version_and_rule_id(rules, make_facts):
    rs = rules(SET).with_version(7)
    d = rs.evaluate(make_facts(account="ch"))
    assert isinstance(d, Decision) and (d.rule_id, d.version) == ("default", 7)
    assert rs.evaluate(make_facts(account="ch"), explain=True).version == 7


def test_explain_says_why_each_earlier_rule_did_not_match(rules, make_facts):
    rs = rules(SET)
    d = rs.evaluate(make_facts(account="labo", content="pdf", recipient_kind="unresolved", size=10), explain=True)
    assert d.rule_id == "labo-unresolved"
    assert d.explain == (
        "bad-sender (10-test.yaml:3): mail_from: 'sender@lab.example' is not '*@*.local'",
        "labo-hprim (10-test.yaml:6): content: 'pdf' is not 'hprim_sante'",
    )
    d = rs.evaluate(make_facts(account="ch", size=10), explain=True)
    assert d.explain[1] == "labo-hprim (10-test.yaml:6): account: 'ch' is not 'labo'; content: None is not 'hprim_sante'"
    assert d.explain[3] == "big (10-test.yaml:12): size: 10 is not >= 1000000 bytes"
    assert (d.rule_id, d.stage) == ("default", "data")


def test_needs_content_false_for_envelope_only_sets(rules):
    rs = rules("rules:\n  - id: a\n    match: {account: a, time: {days: mon}}\n")
    assert not rs.needs_content and rs.header_names == frozenset()


def test_a_rule_set_must_end_with_a_catch_all(rules):
    rs = rules(SET)
    with pytest.raises(ValueError):
        RuleSet(rs.rules[:-1])


def test_data_reply_only_when_every_recipient_gets_the_same_reject(rules, make_facts):
    rs = rules(SET)
    rej = rs.evaluate(make_facts(mail_from="a@b.local"))
    ok = rs.evaluate(make_facts())
    assert data_reply([rej, rej]).reply == "553 5.1.7 bad sender"
    assert data_reply([rej, ok]) is None
    assert data_reply([ok]) is None and data_reply([]) is None


def _kw(f: Facts) -> dict:
    return {k: getattr(f, k) for k in Facts.__slots__}


ACCOUNTS = ["a", "b", "c", "d", None]
BIG = "\n".join(
    f"  - id: r{i}\n    match: {{{m}}}" for i, m in enumerate([
        "account: a", "account: [a, b], content: pdf", "rcpt: x.fr", "account: c, recipient_kind: paper",
        "content: cda", "account: [b, c], rcpt: y.fr", "recipient_kind: unresolved, account: d",
        "account: b, size: {max: 100}", "mail_from: '@s.fr'", "account: a, content: cda"]))


INDEXED = compile_files({"10-big.yaml": "rules:\n" + BIG + "\n", "99-z.yaml": "rules:\n  - id: z\n"},
                        FALLBACK_TRANSFORMS)


@settings(max_examples=300, deadline=None)
@given(account=st.sampled_from(ACCOUNTS), content=st.sampled_from([None, "pdf", "cda"]),
       rcpt=st.sampled_from(["u@x.fr", "u@y.fr", "u@z.fr"]), mail_from=st.sampled_from(["m@s.fr", "m@t.fr"]),
       kind=st.sampled_from([None, "paper", "unresolved"]), size=st.sampled_from([None, 50, 500]))
def test_the_account_index_gives_the_same_decisions_as_trying_every_rule(account, content, rcpt, mail_from, kind,
                                                                            size):
    rs = INDEXED
    f = Facts(account, mail_from, rcpt, kind, content, None, {}, size, datetime(2024, 1, 1, tzinfo=timezone.utc))
    naive = next(r.id for r in rs.rules if all(m.test(f) for m in r.matchers))
    d = rs.evaluate(f)
    assert d.rule_id == naive == rs.evaluate(f, explain=True).rule_id
    assert d.stage == rs.evaluate(f, explain=True).stage
    early = rs.evaluate_rcpt(f.envelope())
    if early is not None:
        assert early.rule_id == naive and d.stage == "rcpt"
    else:
        assert d.stage == "data"
