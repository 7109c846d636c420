"""Fixtures for the rules integration tests: a rules directory, settings and a CLI context on the test database."""

from __future__ import annotations

import asyncio

import pytest

from hub import db
from hub.cli import Context
from hub.settings import DatabaseSection, RulesSection, Settings


def rule_files(tag: str, accounts: int = 3) -> dict[str, str]:
    """A valid set whose rule ids all start with `tag`."""
    body = "".join(f"  - id: {tag}-r{i}\n    match: {{account: acc{i}}}\n" for i in range(accounts))
    return {"10-accounts.yaml": "rules:\n" + body, "99-catch-all.yaml": f"rules:\n  - id: {tag}-default\n"}


def write(directory, files: dict[str, str]) -> None:
    for old in directory.glob("*.yaml"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (directory / name).write_text(text)


class FakeGauge:
    def __init__(self):
        self.value = None

    def set(self, value):
        self.value = value


async def until(predicate, what: str, limit: float = 20.0) -> None:
    """Wait for a condition (a safety limit only: the tests assert outcomes, never durations)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def rules_dir(tmp_path):
    d = tmp_path / "routing_rules"
    d.mkdir()
    write(d, rule_files("v1"))
    return d


@pytest.fixture
def rules_settings(rules_dir):
    return RulesSection(dir=str(rules_dir), watch=True, watch_interval=0.01)


@pytest.fixture
def ctx(database, rules_dir):
    settings = Settings(database=DatabaseSection(url=database.runtime_url), rules=RulesSection(dir=str(rules_dir)))
    return Context(settings, _urls=db.Urls(admin=database.admin_url, runtime=database.runtime_url), _migrated=True)

