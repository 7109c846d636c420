"""The rules engine: ordered rules, first match wins. Small, pure and fast; no I/O, no clock, no globals.

Input is `Facts` about one (message, recipient) pair; output is a `Decision` carrying the rule id and the rule-set
version, so that every routing can be audited and replayed. A `RuleSet` is immutable: the service swaps the
reference when a new version is activated, and a caller takes `rs = service.current` once per message.

Two-phase use by intake:

    RCPT time   rs.evaluate_rcpt(facts)   -> Decision, or None when the outcome depends on content
    after DATA  rs.evaluate(facts)        -> Decision (stage "rcpt" if it was decidable from the envelope alone)

Speed: rules are indexed by sender account (a rule naming accounts is only tried for those accounts), matchers
are precompiled closures and envelope matchers run before content ones. See bench/rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence

from hub.rules.actions import Actions, Reject
from hub.rules.matchers import Matcher

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the engine may know about one recipient of one message. Header names are lower case."""

    account: str | None
    mail_from: str                     # '' for the null sender
    rcpt: str                          # as given in RCPT TO
    recipient_kind: str | None = None  # practitioner | structure | unresolved | paper (directory resolution)
    content: str | None = None         # hprim_sante | hprim_net | hl7_oru | hl7_mdm | cda | xdm | pdf | other |
    #                                    unparsable (MIME structure not readable)
    doc_code: str | None = None        # CDA document type code (LOINC), e.g. 11502-2
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    size: int | None = None            # bytes, as received
    now: datetime = field(default_factory=_utcnow)

    def envelope(self) -> "Facts":
        """The same facts without what is only known after DATA."""
        return Facts(self.account, self.mail_from, self.rcpt, self.recipient_kind, now=self.now)


@dataclass(frozen=True, slots=True)
class Decision:
    rule_id: str
    version: int
    actions: Actions
    stage: str                         # "rcpt": decidable from envelope facts alone; "data": needed the content
    explain: tuple[str, ...] = ()      # with explain=True: why each earlier rule did not match

    @property
    def reject(self) -> Reject | None:
        return self.actions.reject


@dataclass(frozen=True)
class Rule:
    id: str
    file: str
    line: int
    matchers: tuple[Matcher, ...]
    actions: Actions
    description: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def envelope_only(self) -> bool:
        return all(m.envelope for m in self.matchers)

    @property
    def accounts(self) -> frozenset[str] | None:
        sets = [m.accounts for m in self.matchers if m.accounts is not None]
        return frozenset.intersection(*sets) if sets else None


Test = Callable[[Facts], bool]
_Entry = tuple  # (envelope test | None, content test | None, decision at rcpt stage, decision at data stage)


def _all(tests: Sequence[Test]) -> Test | None:
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda f: a(f) and b(f)
    tests = tuple(tests)

    def every(f: Facts) -> bool:
        for t in tests:
            if not t(f):
                return False
        return True
    return every


class RuleSet:
    """An immutable, compiled rule set. The last rule must be a catch-all (no matchers)."""

    __slots__ = ("version", "content_hash", "rules", "files", "needs_content", "header_names",
                 "_by_account", "_generic", "_by_id")

    def __init__(self, rules: Iterable[Rule], *, version: int = 0, content_hash: str = "",
                 files: Mapping[str, str] | None = None):
        self.rules: tuple[Rule, ...] = tuple(rules)
        if not self.rules or self.rules[-1].matchers:
            raise ValueError("a rule set must end with a catch-all rule (no matchers)")
        self.version = version
        self.content_hash = content_hash
        self.files: Mapping[str, str] = MappingProxyType(dict(files or {}))
        self.needs_content = any(not m.envelope for r in self.rules for m in r.matchers)
        self.header_names = frozenset(m.name.split(" ", 1)[1] for r in self.rules for m in r.matchers
                                      if m.name.startswith("header "))
        self._by_id = {r.id: r for r in self.rules}
        entries = [(r, self._entry(r)) for r in self.rules]
        accounts = set().union(*(r.accounts or () for r in self.rules))
        self._generic: tuple[_Entry, ...] = tuple(e for r, e in entries if r.accounts is None)
        self._by_account: dict[str, tuple[_Entry, ...]] = {
            a: tuple(e for r, e in entries if r.accounts is None or a in r.accounts) for a in accounts}

    def _entry(self, rule: Rule) -> _Entry:
        env = _all([m.test for m in rule.matchers if m.envelope])
        content = _all([m.test for m in rule.matchers if not m.envelope])
        return (env, content, Decision(rule.id, self.version, rule.actions, "rcpt"),
                Decision(rule.id, self.version, rule.actions, "data"))

    def with_version(self, version: int, content_hash: str | None = None) -> "RuleSet":
        return RuleSet(self.rules, version=version, files=self.files,
                       content_hash=self.content_hash if content_hash is None else content_hash)

    def rule(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def evaluate(self, facts: Facts, *, explain: bool = False) -> Decision:
        """The first rule whose matchers all hold. Pure; never raises for well-formed facts."""
        if explain:
            return self._explain(facts)
        decidable = True
        for env, content, at_rcpt, at_data in self._by_account.get(facts.account, self._generic):
            if env is not None and not env(facts):
                continue
            if content is None:
                return at_rcpt if decidable else at_data
            if content(facts):
                return at_data
            decidable = False
        raise AssertionError("unreachable: the last rule is a catch-all")

    def evaluate_rcpt(self, facts: Facts) -> Decision | None:
        """The decision if it is determined by envelope facts alone (content facts are ignored), else None."""
        for env, content, at_rcpt, _ in self._by_account.get(facts.account, self._generic):
            if env is not None and not env(facts):
                continue
            return at_rcpt if content is None else None
        raise AssertionError("unreachable: the last rule is a catch-all")

    def _explain(self, facts: Facts) -> Decision:
        reasons: list[str] = []
        decidable = True
        for rule in self.rules:
            failed = [m for m in rule.matchers if not m.test(facts)]
            if not failed:
                stage = "rcpt" if decidable and rule.envelope_only else "data"
                return Decision(rule.id, self.version, rule.actions, stage, tuple(reasons))
            if all(not m.envelope for m in failed):
                decidable = False
            reasons.append(f"{rule.id} ({rule.where}): " + "; ".join(m.why_not(facts) for m in failed))
        raise AssertionError("unreachable: the last rule is a catch-all")


def data_reply(decisions: Sequence[Decision]) -> Reject | None:
    """After DATA, SMTP has one reply for all recipients: a rule's reject can be that reply only when every
    recipient's decision is the same reject. Otherwise accept, and notify (DSN) the rejected recipients afterwards."""
    if not decisions:
        return None
    first = decisions[0].actions.reject
    if first is None or any(d.actions.reject != first for d in decisions[1:]):
        return None
    return first


def recipient_kind_of(resolution) -> str | None:
    """The `recipient_kind` fact from a hub.directory.resolve.Resolution: unresolved (no address), paper (operator
    preference), practitioner or structure; None when the directory does not say (hub-local, unlisted trust-space
    addresses), which no `recipient_kind` matcher matches."""
    if getattr(resolution, "address", None) is None:
        return "unresolved"
    if getattr(resolution, "paper", False):
        return "paper"
    kind = getattr(resolution, "kind", None)
    return kind if kind in ("practitioner", "structure") else None
