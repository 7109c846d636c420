"""Helpers for the rules unit tests: compile YAML text into a RuleSet, or collect its errors."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone

import pytest

from hub.rules.engine import Facts
from hub.rules.loader import FALLBACK_TRANSFORMS, RulesInvalid, compile_files

CATCH_ALL = "rules:\n  - id: default\n"


def compile_text(text: str, *, catch_all: bool = True, name: str = "10-test.yaml"):
    files = {name: textwrap.dedent(text)}
    if catch_all:
        files["99-catch-all.yaml"] = CATCH_ALL
    return compile_files(files, FALLBACK_TRANSFORMS)


def errors_of(files: dict[str, str]) -> list[str]:
    with pytest.raises(RulesInvalid) as info:
        compile_files({k: textwrap.dedent(v) for k, v in files.items()}, FALLBACK_TRANSFORMS)
    return [str(e) for e in info.value.errors]


def facts(**kw) -> Facts:
    base = dict(account="acct", mail_from="sender@lab.example", rcpt="dr@med.example",
                now=datetime(2024, 5, 15, 10, 0, tzinfo=timezone.utc))
    base.update(kw)
    return Facts(**base)


@pytest.fixture
def rules():
    return compile_text


@pytest.fixture
def rule_errors():
    return errors_of


@pytest.fixture
def make_facts():
    return facts


@pytest.fixture
def hit():
    """hit(match_yaml, **facts) -> whether a one-rule set with that `match:` matches."""
    def check(match: str, **kw) -> bool:
        rs = compile_text(f"rules:\n  - id: r\n    match: {match}\n")
        return rs.evaluate(facts(**kw)).rule_id == "r"
    return check

