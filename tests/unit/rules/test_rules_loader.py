"""Loading: every error reported with file:line:column; the shipped rule set and README examples are valid."""

import re
from pathlib import Path

import pytest

from hub.rules.loader import FALLBACK_TRANSFORMS, RulesInvalid, compile_files, content_hash, read_dir

ROOT = Path(__file__).resolve().parents[3]
Z = "rules:\n  - id: z\n"


def test_yaml_syntax_error_is_located(rule_errors):
    errors = rule_errors({"10-a.yaml": "rules:\n  - id: a\n    match: {account: [x, y}\n", "99-z.yaml": Z})
    assert len(errors) == 1 and errors[0].startswith("10-a.yaml:3:")
    assert "YAML syntax" in errors[0]


def test_every_error_of_every_file_is_reported(rule_errors):
    errors = rule_errors({
        "10-a.yaml": """\
            rules:
              - id: a
                match:
                  acount: x
                  content: word
                  recipient_kind: doctor
              - id: b
                match:
                  time: {days: someday, hours: "25:00-26:00"}
                  size: {min: big}
                  header: {X-A: {regex: "(["}}
                  mail_from: "a@"
        """,
        "20-b.yaml": """\
            rules:
              - id: a
                match: {doc_code: 1}
              - match: {account: y}
              - id: "bad id!"
                match: {account: z}
        """,
        "99-z.yaml": Z,
    })
    assert errors == [
        "10-a.yaml:4:7: unknown matcher 'acount' (expected one of: account, mail_from, rcpt, recipient_kind, time, "
        "content, doc_code, header, size)",
        "10-a.yaml:5:16: content: 'word' is not one of hprim_sante, hprim_net, hl7_oru, hl7_mdm, cda, xdm, pdf, json, "
        "other, unparsable",
        "10-a.yaml:6:23: recipient_kind: 'doctor' is not one of practitioner, structure, unresolved, paper",
        "10-a.yaml:9:20: time.days: 'someday' is not a day (mon..sun, lun..dim) or range (mon-fri)",
        "10-a.yaml:9:36: time.hours: '25:00-26:00' is not HH:MM-HH:MM (end excluded; may wrap midnight)",
        "10-a.yaml:10:19: size.min: 'big' is not a size (bytes, or 500KB, 10MB, 2MiB...)",
        "10-a.yaml:11:29: header.X-A.regex: invalid regular expression: unterminated character set at position 1",
        "10-a.yaml:12:18: mail_from: 'a@' is not an address, @domain, domain or glob",
        "20-b.yaml:2:5: duplicate rule id 'a' (first at 10-a.yaml:2)",
        "20-b.yaml:4:5: rule: `id` is required",
        "20-b.yaml:5:9: id: 'bad id!' must be letters, digits, '_', '.', ':' or '-' (at most 100)",
    ]


def test_the_last_rule_must_be_a_catch_all(rule_errors):
    errors = rule_errors({"10-a.yaml": "rules:\n  - id: a\n    match: {account: x}\n"})
    assert errors == ["10-a.yaml:2:5: the last rule ('a') must be a catch-all, without `match:` or file `scope:`, "
                      "saying what happens to all other mail (e.g. 99-catch-all.yaml)"]
    # a rule without match: inside a scoped file is not a catch-all
    errors = rule_errors({"10-a.yaml": "scope: {account: x}\nrules:\n  - id: a\n"})
    assert "must be a catch-all" in errors[0]


def test_a_catch_all_before_the_end_makes_the_rest_unreachable(rule_errors):
    errors = rule_errors({"10-a.yaml": "rules:\n  - id: everything\n  - id: never\n    match: {account: x}\n",
                          "99-z.yaml": Z})
    assert errors[0] == ("10-a.yaml:3:5: rule 'never' is unreachable: rule 'everything' (10-a.yaml:2) matches "
                         "everything; a catch-all must be the last rule")


def test_a_broken_matcher_does_not_make_a_rule_look_like_a_catch_all(rule_errors):
    errors = rule_errors({"10-a.yaml": "rules:\n  - id: a\n    match: {nope: 1}\n", "99-z.yaml": Z})
    assert len(errors) == 1 and "unknown matcher 'nope'" in errors[0]


def test_yaml_structure_errors(rule_errors):
    errors = rule_errors({
        "10-a.yaml": "base: &b {account: x}\nrules:\n  - id: a\n    match: *b\n",
        "11-a.yaml": "rules:\n  - id: a2\n    match: {<<: {x: 1}}\n",
        "20-b.yaml": "rules:\n  - id: b\n    id: c\n    match: {account: b}\n",
        "30-c.yaml": "",
        "40-d.yaml": "- just a list\n",
        "50-e.yaml": "scope: {account: x}\nrules:\n  - id: e\n    match: {account: y}\n",
        "99-z.yaml": Z,
    })
    assert errors == [
        "10-a.yaml:4:12: YAML aliases (*name) are not supported in rule files; write the value out",
        "11-a.yaml:3:13: YAML merge keys (<<) are not supported in rule files",
        "20-b.yaml:3:5: rule: duplicate key 'id' (first at line 2)",
        "30-c.yaml:1:1: empty file: expected a mapping with `rules:`",
        "40-d.yaml:1:1: file: expected a mapping, found a list",
        "50-e.yaml:4:13: match: 'account' is already set by the file's scope:",
    ]


def test_no_files_is_an_error():
    with pytest.raises(RulesInvalid) as info:
        compile_files({}, FALLBACK_TRANSFORMS)
    assert "no rule files" in str(info.value)


def test_read_dir_orders_files_and_ignores_others(tmp_path):
    (tmp_path / "20-b.yml").write_text("b")
    (tmp_path / "10-a.yaml").write_text("a")
    (tmp_path / "README.md").write_text("doc")
    (tmp_path / ".10-a.yaml.tmp").write_text("partial")
    assert list(read_dir(tmp_path)) == ["10-a.yaml", "20-b.yml"]
    (tmp_path / "30-c.yaml").write_bytes(b"rules: \xff\n")
    with pytest.raises(RulesInvalid) as info:
        read_dir(tmp_path)
    assert str(info.value.errors[0]) == "30-c.yaml:1:1: not UTF-8 text (byte 7)"
    with pytest.raises(RulesInvalid):
        read_dir(tmp_path / "missing")


def test_content_hash_ignores_dict_order_only():
    assert content_hash({"a": "1", "b": "2"}) == content_hash({"b": "2", "a": "1"})
    assert content_hash({"a": "1"}) != content_hash({"a": "1 "})


def test_the_shipped_rule_set_is_valid():
    rs = compile_files(read_dir(ROOT / "routing_rules"), FALLBACK_TRANSFORMS)
    assert rs.rules[-1].id == "default" and len(rs.rules) > 10


def _readme_examples() -> list[str]:
    text = (ROOT / "routing_rules" / "README.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


@pytest.mark.parametrize("block", _readme_examples())
def test_every_readme_example_is_valid(block):
    try:
        compile_files({"10-example.yaml": block}, FALLBACK_TRANSFORMS)
    except RulesInvalid:
        compile_files({"10-example.yaml": block, "99-z.yaml": Z}, FALLBACK_TRANSFORMS)


def test_the_readme_shows_every_matcher_and_action():
    from hub.rules.actions import DISPOSITIONS, MODIFIERS
    from hub.rules.matchers import CONTENT, ENVELOPE

    text = (ROOT / "routing_rules" / "README.md").read_text()
    for name in ENVELOPE + CONTENT + DISPOSITIONS + MODIFIERS:
        assert f"id: example-{name.replace('_', '-')}" in text, name


@pytest.mark.parametrize("make, reason", [
    (lambda p: (p / "15-x.yaml").symlink_to(p / "gone.yaml"), "No such file or directory"),   # link to an unmounted file
    (lambda p: (p / "15-x.yaml").symlink_to(p / "15-x.yaml"), "Too many levels of symbolic links"),
    (lambda p: (p / "15-x.yaml").mkdir(), "Is a directory")])
def test_a_rule_file_that_cannot_be_read_is_an_error_not_silently_skipped(tmp_path, make, reason):
    (tmp_path / "10-a.yaml").write_text("a")
    make(tmp_path)
    with pytest.raises(RulesInvalid) as info:
        read_dir(tmp_path)
    assert str(info.value.errors[0]) == f"15-x.yaml:1:1: cannot read: {reason}"


def test_a_rules_directory_that_cannot_be_listed_is_an_error_naming_it(tmp_path, monkeypatch):
    def denied(self):       # the tests run as root, whom chmod does not stop
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(RulesInvalid) as info:
        read_dir(tmp_path)
    assert str(info.value.errors[0]) == f"{tmp_path}:1:1: cannot read the rules directory: Permission denied"


def test_hub_rules_check_on_a_directory_without_rule_files_names_the_directory(tmp_path, capsys):
    from hub.cli import main

    (tmp_path / "README.md").write_text("no rules here")
    assert main(["rules", "check", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"{tmp_path}:1:1: no rule files (*.yaml) found"


def test_transform_names_are_the_chains_and_need_no_settings():
    """`hub rules check` knows the chain names without building the transform registry (no schema, LOINC map or
    sender profiles loaded); the rules tests' FALLBACK_TRANSFORMS is that same set."""
    from hub.rules.loader import FALLBACK_TRANSFORMS, transform_names
    from hub.settings import TransformSection
    from hub.transform.registry import build_registry

    assert transform_names() == build_registry(TransformSection(), "X").names() == FALLBACK_TRANSFORMS
