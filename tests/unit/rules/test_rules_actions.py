"""Every action: parsed into typed values, with defaults, and refused with a location when malformed."""

from hub.rules.actions import Fallback, HeaderEdits, Reject, Transform


def actions_of(rules, then: str):
    rs = rules(f"rules:\n  - id: r\n    match: {{account: a}}\n    then:\n{then}")
    return rs.rule("r").actions


def test_deliver_is_the_default_disposition(rules):
    assert actions_of(rules, "      deliver: true\n").disposition == "deliver"
    rs = rules("rules:\n  - id: r\n    match: {account: a}\n")
    assert rs.rule("r").actions.disposition == "deliver"


def test_transform_short_and_long_form(rules):
    assert actions_of(rules, "      transform: cda_to_xdm\n").transform == Transform("cda_to_xdm", {})
    a = actions_of(rules, "      transform: {chain: pdf_to_cda_n1_xdm, params: {doc_code: 11502-2, metadata: {version: 3},"
                          " title: on}}\n")
    assert a.transform.chain == "pdf_to_cda_n1_xdm"
    assert dict(a.transform.params) == {"doc_code": "11502-2", "metadata": {"version": 3}, "title": True}


def test_headers_add_set_remove(rules):
    a = actions_of(rules, "      headers:\n        add: {X-A: '1'}\n        set: {X-B: two}\n"
                          "        remove: [X-C, X-D]\n")
    assert a.headers == HeaderEdits(add=(("X-A", "1"),), set=(("X-B", "two"),), remove=("X-C", "X-D"))


def test_copy_to_redirect_priority_on_invalid(rules):
    a = actions_of(rules, "      copy_to: Archive@Lab.fr\n      priority: -5\n      on_invalid: original\n")
    assert (a.copy_to, a.priority, a.on_invalid) == (("archive@lab.fr",), -5, "original")
    a = actions_of(rules, "      redirect: print@hub.example.org\n      copy_to: [a@b.fr, c@d.fr]\n")
    assert (a.disposition, a.redirect, a.copy_to) == ("redirect", "print@hub.example.org", ("a@b.fr", "c@d.fr"))


def test_fallback_forms(rules):
    assert actions_of(rules, "      fallback: reject\n").fallback == Fallback("reject")
    assert actions_of(rules, "      fallback: paper\n").fallback == Fallback("paper")
    assert actions_of(rules, "      fallback: mailbox\n").fallback == Fallback("mailbox", None)
    assert actions_of(rules, "      fallback: {mailbox: sec@lab.fr}\n").fallback == Fallback("mailbox", "sec@lab.fr")


def test_hold_and_reject(rules):
    a = actions_of(rules, "      hold: check the new sender\n")
    assert (a.disposition, a.hold) == ("hold", "check the new sender")
    assert actions_of(rules, "      reject:\n").reject == Reject(550, "5.7.1", "Message refused by the routing policy")
    r = actions_of(rules, "      reject: {code: 553, enhanced: 5.1.7, text: Bad sender}\n").reject
    assert r.reply == "553 5.1.7 Bad sender"
    assert actions_of(rules, "      reject: {code: 451}\n").reject.enhanced == "4.7.1"


def test_action_errors_are_located(rule_errors):
    errors = rule_errors({"10-a.yaml": """\
        rules:
          - id: r
            match: {account: a}
            then:
              transform: nope
              redirect: not-an-address
              hold: twice
              priority: high
              on_invalid: ignore
              fallback: mars
              headers: {add: {"Bad Name": x}, remove: [ok], replace: {}}
              reject: {code: 250}
              explode: true
        """, "99-z.yaml": "rules:\n  - id: z\n"})
    assert errors == [
        "10-a.yaml:5:18: transform: unknown chain 'nope' (known: cda_to_xdm, cisis_hl7_to_xdm, hl7_oru_to_cda_xdm, "
        "hprim_to_cda_xdm, mss_headers, pdf_to_cda_n1_xdm)",
        "10-a.yaml:6:17: redirect: 'not-an-address' is not a mail address",
        "10-a.yaml:7:7: a rule has one of deliver, redirect, hold, reject; found redirect and hold and reject",
        "10-a.yaml:8:17: priority: expected an integer, found 'high'",
        "10-a.yaml:9:19: on_invalid: expected one of hold, original, notify, found 'ignore'",
        "10-a.yaml:10:17: fallback: expected reject, paper, mailbox or {mailbox: ADDRESS}, found 'mars'",
        "10-a.yaml:11:23: headers.add: 'Bad Name' is not a valid header name",
        "10-a.yaml:11:53: headers: unknown key 'replace' (expected add, set, remove)",
        "10-a.yaml:12:22: reject.code: 250 is not a 4xx or 5xx SMTP reply code",
        "10-a.yaml:13:7: unknown action 'explode' (expected one of: deliver, redirect, hold, reject, transform, "
        "headers, copy_to, fallback, priority, on_invalid)",
    ]


def test_reject_takes_no_modifiers(rule_errors):
    errors = rule_errors({"10-a.yaml": """\
        rules:
          - id: r
            match: {account: a}
            then: {reject: {code: 554, enhanced: 4.7.1}, copy_to: x@y.fr}
        """, "99-z.yaml": "rules:\n  - id: z\n"})
    assert errors == ["10-a.yaml:4:11: reject delivers nothing: remove copy_to",
                      "10-a.yaml:4:20: reject: enhanced code 4.7.1 does not agree with reply code 554"]


def test_transform_params_the_chain_does_not_read_are_errors(rule_errors):
    """A misspelt parameter, a parameter of another chain, a metadata key that does not exist, an unknown time zone
    or CR-BIO chapter: each an error at its line, never a document quietly built with the default."""
    errors = rule_errors({"10-a.yaml": """\
        rules:
          - id: r
            match: {account: a}
            then:
              transform:
                chain: hprim_to_cda_xdm
                params: {chaptre: 18723-7, doc_code: 11502-2, tz: Mars/Olympus}
          - id: s
            match: {account: b}
            then:
              transform:
                chain: pdf_to_cda_n1_xdm
                params: {doc_code: 11490-0, chapter: 18723-7, metadata: {org_finess: "690000001", patient_oid: x}}
          - id: t
            match: {account: c}
            then:
              transform: {chain: hl7_oru_to_cda_xdm, params: {chapter: "99999-9", body: Bonjour, tz: Europe/Paris}}
        """, "99-z.yaml": "rules:\n  - id: z\n"})
    known_lab = "(its parameters: body, chapter, metadata, now, tz)"
    assert errors == [
        f"10-a.yaml:7:18: transform.params: hprim_to_cda_xdm has no parameter 'chaptre' {known_lab}",
        f"10-a.yaml:7:36: transform.params: hprim_to_cda_xdm has no parameter 'doc_code' {known_lab}",
        "10-a.yaml:7:59: transform.params.tz: unknown time zone 'Mars/Olympus'",
        "10-a.yaml:13:37: transform.params: pdf_to_cda_n1_xdm has no parameter 'chapter' "
        "(its parameters: body, doc_code, metadata, now, title, tz)",
        "10-a.yaml:13:91: transform.params.metadata: unknown metadata key 'patient_oid' "
        "(the flat keys of docs/transform.md §3)",
        "10-a.yaml:17:64: transform.params.chapter: '99999-9' is not a CR-BIO chapter (one of "
        + errors[-1].split("(one of ")[-1],
    ]
    assert "18723-7" in errors[-1]
