"""Matchers: the `match:` mapping of a rule, compiled once into small pure functions of `Facts`.

Every key is one matcher; all must hold (AND). A list of values means any of them (OR).

    envelope (known at RCPT time)   account, mail_from, rcpt, recipient_kind, time
    content  (known after DATA)     content, doc_code, header, size

Addresses are compared in lower case. An address pattern is `user@domain` (exact), `@domain` or `domain` (any
address at that domain), a glob (`*`, `?`, `[...]`: `*@*.chu-exemple.fr`, `labo-*@bio.fr`), or `<>` (the null
sender). A fact that is unknown (None) never matches a matcher that looks at it.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from yaml.nodes import MappingNode, Node, ScalarNode

from hub.rules.yamlnodes import Source

PARIS = ZoneInfo("Europe/Paris")
RECIPIENT_KINDS = ("practitioner", "structure", "unresolved", "paper")
CONTENTS = ("hprim_sante", "hprim_net", "hl7_oru", "hl7_mdm", "cda", "xdm", "pdf", "json", "other", "unparsable")
ENVELOPE = ("account", "mail_from", "rcpt", "recipient_kind", "time")
CONTENT = ("content", "doc_code", "header", "size")
_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6,
         "lun": 0, "mar": 1, "mer": 2, "jeu": 3, "ven": 4, "sam": 5, "dim": 6}
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 10**3, "m": 10**6, "g": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")

Test = Callable[[Any], bool]


@dataclass(frozen=True)
class Matcher:
    name: str                          # the key in `match:` (for header: "header <name>")
    envelope: bool                     # decidable from envelope facts alone (RCPT time)
    test: Test
    text: str                          # what it requires, for explanations
    fact: Callable[[Any], Any]         # the fact it looks at, for explanations
    accounts: frozenset[str] | None = None   # for the account index

    def why_not(self, facts: Any) -> str:
        return f"{self.name}: {self.fact(facts)!r} is not {self.text}"


def compile_match(src: Source, node: Node | None) -> list[Matcher]:
    """Matchers in evaluation order: envelope ones first (cheap, and they decide RCPT-time evaluation)."""
    if node is None or (isinstance(node, ScalarNode) and node.tag.endswith(":null")):
        return []
    out: list[Matcher] = []
    for key, key_node, value in src.mapping(node, "match"):
        build = _BUILDERS.get(key)
        if build is None:
            src.error(key_node, f"unknown matcher {key!r} (expected one of: {', '.join(ENVELOPE + CONTENT)})")
            continue
        out.extend(build(src, value))
    return sorted(out, key=lambda m: not m.envelope)


# --- envelope matchers --------------------------------------------------------------------------------------------

def _account(src: Source, node: Node) -> list[Matcher]:
    names = frozenset(v for v, n in src.scalars(node, "account") if v or src.error(n, "account: empty name"))
    if not names:
        return []
    return [Matcher("account", True, lambda f: f.account in names, _one_of(names), lambda f: f.account,
                    accounts=names)]


def address_test(src: Source, node: Node, what: str) -> tuple[Callable[[str], bool], str] | None:
    """Compile address patterns into one function: exact set, domain set, then one combined glob regex."""
    exact: set[str] = set()
    domains: set[str] = set()
    globs: list[str] = []
    shown = []
    for raw, item in src.scalars(node, what):
        p = raw.strip().lower()
        shown.append(raw)
        local, at, domain = p.rpartition("@")
        if p == "<>":
            exact.add("")
        elif any(c in p for c in "*?["):
            globs.append(p if at else f"*@{p}")
        elif not p or (at and not domain) or " " in p:
            src.error(item, f"{what}: {raw!r} is not an address, @domain, domain or glob")
        elif at and not local:
            domains.add(domain)
        elif at:
            exact.add(p)
        else:
            domains.add(p)
    if not shown:
        return None
    rx = re.compile("|".join(fnmatch.translate(g) for g in globs)).match if globs else None

    def test(value: str | None) -> bool:
        if value is None:
            return False
        v = value.lower()
        if v in exact or v.rpartition("@")[2] in domains:
            return True
        return rx is not None and rx(v) is not None

    return test, _one_of(shown)


def _address(key: str):
    """The matcher of an envelope address (`mail_from`, `rcpt`): the Facts attribute of the same name."""
    def build(src: Source, node: Node) -> list[Matcher]:
        built = address_test(src, node, key)
        if built is None:
            return []
        test, text = built
        get = _getter(key)
        return [Matcher(key, True, lambda f: test(get(f)), text, get)]
    return build


def _enum(key: str, allowed: tuple[str, ...], envelope: bool, attr: str):
    def build(src: Source, node: Node) -> list[Matcher]:
        values = set()
        for value, item in src.scalars(node, key):
            if value not in allowed:
                src.error(item, f"{key}: {value!r} is not one of {', '.join(allowed)}")
            else:
                values.add(value)
        if not values:
            return []
        frozen = frozenset(values)
        get = _getter(attr)
        return [Matcher(key, envelope, lambda f: get(f) in frozen, _one_of(frozen), get)]
    return build


def _time(src: Source, node: Node) -> list[Matcher]:
    days: set[int] | None = None
    spans: list[tuple[int, int]] | None = None
    for key, key_node, value in src.mapping(node, "time"):
        if key == "days":
            days = set()
            for text, item in src.scalars(value, "time.days"):
                parsed = _parse_days(text)
                if parsed is None:
                    src.error(item, f"time.days: {text!r} is not a day (mon..sun, lun..dim) or range (mon-fri)")
                else:
                    days |= parsed
        elif key == "hours":
            spans = []
            for text, item in src.scalars(value, "time.hours"):
                span = _parse_span(text)
                if span is None:
                    src.error(item, f"time.hours: {text!r} is not HH:MM-HH:MM (end excluded; may wrap midnight)")
                else:
                    spans.append(span)
        else:
            src.error(key_node, f"time: unknown key {key!r} (expected days, hours; times are Europe/Paris)")
    if days is None and spans is None:
        if isinstance(node, MappingNode):
            src.error(node, "time: give days, hours or both")
        return []
    day_set = frozenset(days) if days is not None else frozenset(range(7))
    span_t = tuple(spans) if spans is not None else ((0, 1440),)

    def local(f) -> datetime:
        now = f.now if f.now.tzinfo is not None else f.now.replace(tzinfo=timezone.utc)
        return now.astimezone(PARIS)

    def test(f) -> bool:
        t = local(f)
        if t.weekday() not in day_set:
            return False
        m = t.hour * 60 + t.minute
        return any((a <= m < b) if a < b else (m >= a or m < b) for a, b in span_t)

    text = ",".join(_DAY_NAMES[d] for d in sorted(day_set)) + " " + ",".join(
        f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in span_t) + " Europe/Paris"
    return [Matcher("time", True, test, text, lambda f: local(f).strftime("%a %H:%M"))]


def _parse_days(text: str) -> set[int] | None:
    t = text.strip().lower()
    if t in _DAYS:
        return {_DAYS[t]}
    first, dash, last = t.partition("-")
    if dash and first in _DAYS and last in _DAYS:
        a, b = _DAYS[first], _DAYS[last]
        return set(range(a, b + 1)) if a <= b else set(range(a, 7)) | set(range(0, b + 1))
    return None


def _parse_span(text: str) -> tuple[int, int] | None:
    start, dash, end = text.strip().partition("-")
    a, b = _minutes(start.strip()), _minutes(end.strip())
    if not dash or a is None or b is None or a == b or a == 1440:
        return None
    return a, b


def _minutes(text: str) -> int | None:
    m = _HHMM.match(text)
    if not m:
        return None
    h, mi = int(m.group(1)), int(m.group(2))
    if mi > 59 or h > 24 or (h == 24 and mi):
        return None
    return h * 60 + mi


# --- content matchers ---------------------------------------------------------------------------------------------

def _doc_code(src: Source, node: Node) -> list[Matcher]:
    codes = frozenset(v.strip() for v, n in src.scalars(node, "doc_code") if v.strip() or src.error(n, "empty"))
    if not codes:
        return []
    return [Matcher("doc_code", False, lambda f: f.doc_code in codes, _one_of(codes), lambda f: f.doc_code)]


def _header(src: Source, node: Node) -> list[Matcher]:
    out = []
    for name, name_node, value in src.mapping(node, "header"):
        lname = name.lower()
        get = (lambda n: lambda f: f.headers.get(n))(lname)
        if isinstance(value, MappingNode):
            pattern = None
            for key, key_node, v in src.mapping(value, f"header.{name}"):
                if key != "regex":
                    src.error(key_node, f"header.{name}: unknown key {key!r} (expected regex)")
                    continue
                text = src.scalar(v, f"header.{name}.regex")
                if text is None:
                    continue
                try:
                    pattern = re.compile(text)
                except re.error as exc:
                    src.error(v, f"header.{name}.regex: invalid regular expression: {exc}")
            if pattern is None:
                continue
            search = pattern.search
            test = (lambda g, s: lambda f: (h := g(f)) is not None and s(h) is not None)(get, search)
            out.append(Matcher(f"header {lname}", False, test, f"matching /{pattern.pattern}/", get))
        else:
            text = src.scalar(value, f"header.{name}", allow_empty=True)
            if text is None:
                continue
            want = text.strip()
            test = (lambda g, w: lambda f: (h := g(f)) is not None and h.strip() == w)(get, want)
            out.append(Matcher(f"header {lname}", False, test, repr(want), get))
    return out


def parse_size(text: str) -> int | None:
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _size(src: Source, node: Node) -> list[Matcher]:
    bounds: dict[str, int] = {}
    given = False
    for key, key_node, value in src.mapping(node, "size"):
        given = True
        if key not in ("min", "max"):
            src.error(key_node, f"size: unknown key {key!r} (expected min, max)")
            continue
        text = src.scalar(value, f"size.{key}")
        size = parse_size(text) if text is not None else None
        if text is not None and size is None:
            src.error(value, f"size.{key}: {text!r} is not a size (bytes, or 500KB, 10MB, 2MiB...)")
        elif size is not None:
            bounds[key] = size
    if not bounds:
        if isinstance(node, MappingNode) and not given:
            src.error(node, "size: give min, max or both")
        return []
    lo, hi = bounds.get("min", 0), bounds.get("max")
    if hi is not None and hi < lo:
        src.error(node, "size: max is smaller than min")
    if hi is None:
        test, text = (lambda f: f.size is not None and f.size >= lo), f">= {lo} bytes"
    else:
        test, text = (lambda f: f.size is not None and lo <= f.size <= hi), f"between {lo} and {hi} bytes"
    return [Matcher("size", False, test, text, lambda f: f.size)]


def _getter(attr: str) -> Callable[[Any], Any]:
    return operator.attrgetter(attr)


def _one_of(values) -> str:
    values = sorted(values)
    return repr(values[0]) if len(values) == 1 else "one of " + ", ".join(repr(v) for v in values)


_BUILDERS = {
    "account": _account, "mail_from": _address("mail_from"), "rcpt": _address("rcpt"),
    "recipient_kind": _enum("recipient_kind", RECIPIENT_KINDS, True, "recipient_kind"),
    "time": _time,
    "content": _enum("content", CONTENTS, False, "content"),
    "doc_code": _doc_code, "header": _header, "size": _size,
}
