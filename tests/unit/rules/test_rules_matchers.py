"""Every matcher, alone and combined (AND), on the pure engine."""

from datetime import datetime, timezone

import pytest

from hub.rules.matchers import parse_size


@pytest.mark.parametrize("account,expected", [("labo", True), ("labo2", True), ("other", False), (None, False)])
def test_account_single_or_list(hit, account, expected):
    assert hit("{account: [labo, labo2]}", account=account) is expected
    assert hit("{account: labo}", account=account) is (account == "labo")


@pytest.mark.parametrize("sender,expected", [
    ("Resultats@Labo.fr", True),          # exact, case-insensitive
    ("x@bioxa.fr", True),                 # @domain
    ("y@site2.bioxa.fr", False),          # @domain is exact: no subdomains
    ("z@lab-nord.mssante.fr", True),      # glob
    ("", True),                           # <> null sender
    ("other@elsewhere.fr", False),
])
def test_mail_from_patterns(hit, sender, expected):
    match = '{mail_from: ["resultats@labo.fr", "@bioxa.fr", "*@lab-*.mssante.fr", "<>"]}'
    assert hit(match, mail_from=sender) is expected


@pytest.mark.parametrize("rcpt,expected", [
    ("a@ch-sud.mssante.fr", True),        # bare domain
    ("a@pole.ch-sud.mssante.fr", True),   # domain glob without @
    ("dr.martin@medecin.fr", True),       # exact address
    ("dr.durand@medecin.fr", False),
    ("a@ch-nord.mssante.fr", False),
])
def test_rcpt_patterns(hit, rcpt, expected):
    match = '{rcpt: [ch-sud.mssante.fr, "*.ch-sud.mssante.fr", dr.martin@medecin.fr]}'
    assert hit(match, rcpt=rcpt) is expected


@pytest.mark.parametrize("kind,expected", [("unresolved", True), ("paper", True), ("practitioner", False),
                                           (None, False)])
def test_recipient_kind(hit, kind, expected):
    assert hit("{recipient_kind: [unresolved, paper]}", recipient_kind=kind) is expected


def paris(y, mo, d, h, mi):
    from zoneinfo import ZoneInfo
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo("Europe/Paris"))


@pytest.mark.parametrize("now,expected", [
    (paris(2024, 5, 15, 8, 0), True),     # Wednesday, start included
    (paris(2024, 5, 15, 17, 59), True),
    (paris(2024, 5, 15, 18, 0), False),   # end excluded
    (paris(2024, 5, 18, 10, 0), False),   # Saturday
    (datetime(2024, 5, 15, 6, 30, tzinfo=timezone.utc), True),   # 08:30 in Paris (summer time)
    (datetime(2024, 1, 17, 6, 30, tzinfo=timezone.utc), False),  # 07:30 in Paris (winter time)
])
def test_time_window_in_paris(hit, now, expected):
    assert hit('{time: {days: mon-fri, hours: "08:00-18:00"}}', now=now) is expected


@pytest.mark.parametrize("now,expected", [
    (paris(2024, 5, 15, 23, 0), True), (paris(2024, 5, 15, 6, 59), True), (paris(2024, 5, 15, 7, 0), False),
    (paris(2024, 5, 15, 12, 0), False),
])
def test_time_window_wrapping_midnight(hit, now, expected):
    assert hit('{time: {hours: "20:00-07:00"}}', now=now) is expected


def test_time_days_only_french_names_and_naive_time_is_utc(hit):
    assert hit("{time: {days: [sam, dim]}}", now=paris(2024, 5, 19, 12, 0))
    assert not hit("{time: {days: [sam, dim]}}", now=paris(2024, 5, 20, 12, 0))
    # naive 23:30 taken as UTC is 01:30 on Sunday in Paris
    assert hit("{time: {days: sun}}", now=datetime(2024, 5, 18, 23, 30))


@pytest.mark.parametrize("content,expected", [("hl7_oru", True), ("hl7_mdm", True), ("pdf", False), (None, False)])
def test_content(hit, content, expected):
    assert hit("{content: [hl7_oru, hl7_mdm]}", content=content) is expected


def test_doc_code(hit):
    assert hit("{doc_code: [11490-0, 34133-9]}", doc_code="34133-9")
    assert not hit("{doc_code: 11490-0}", doc_code="11502-2")
    assert not hit("{doc_code: 11490-0}", doc_code=None)


def test_header_exact_and_regex(hit):
    match = '{header: {X-Hub-Test: "yes", Subject: {regex: "^\\\\[URG"}}}'
    assert hit(match, headers={"x-hub-test": " yes ", "subject": "[URGENT] K+"})
    assert not hit(match, headers={"x-hub-test": "yes", "subject": "Re: [URGENT]"})
    assert not hit(match, headers={"x-hub-test": "no", "subject": "[URGENT]"})
    assert not hit(match, headers={"subject": "[URGENT]"})          # absent header


@pytest.mark.parametrize("size,expected", [(None, False), (999_999, False), (1_000_000, True), (10 * 2**20, True),
                                           (10 * 2**20 + 1, False)])
def test_size_bounds_with_units(hit, size, expected):
    assert hit("{size: {min: 1MB, max: 10MiB}}", size=size) is expected


@pytest.mark.parametrize("text,value", [("512", 512), ("10MB", 10_000_000), ("1.5 kB", 1500), ("2MiB", 2 * 2**20),
                                        ("1g", 10**9), ("ten", None), ("5 parsecs", None)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_matchers_combine_with_and(hit):
    match = "{account: labo, content: pdf, recipient_kind: practitioner}"
    assert hit(match, account="labo", content="pdf", recipient_kind="practitioner")
    assert not hit(match, account="labo", content="pdf", recipient_kind="structure")
    assert not hit(match, account="other", content="pdf", recipient_kind="practitioner")


def test_scope_is_anded_into_every_rule_of_the_file(rules, make_facts):
    rs = rules("""
        scope: {account: labo}
        rules:
          - id: labo-pdf
            match: {content: pdf}
          - id: labo-rest
    """)
    assert rs.evaluate(make_facts(account="labo", content="pdf")).rule_id == "labo-pdf"
    assert rs.evaluate(make_facts(account="labo", content="cda")).rule_id == "labo-rest"
    assert rs.evaluate(make_facts(account="ch", content="pdf")).rule_id == "default"
