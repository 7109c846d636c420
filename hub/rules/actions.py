"""What a rule does once it matches: typed, immutable action values, compiled from the `then:` mapping.

A rule has exactly one *disposition* and any number of *modifiers*:

    disposition   deliver (the default) | redirect: ADDRESS | hold: REASON | reject: {code, enhanced, text}
    modifiers     transform, headers, copy_to, fallback, priority, on_invalid

`reject` takes no modifiers (nothing is delivered). `transform` names must be known to the transform package at
load time (the set of names is passed in by the caller, never looked up here).
"""

from __future__ import annotations

import re
from types import MappingProxyType
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode

from hub.rules.yamlnodes import Source, is_null

DISPOSITIONS = ("deliver", "redirect", "hold", "reject")
MODIFIERS = ("transform", "headers", "copy_to", "fallback", "priority", "on_invalid")
ON_INVALID = ("hold", "original", "notify")
FALLBACKS = ("reject", "paper")          # plus {mailbox: ADDRESS} or bare `mailbox` (the account's mailbox)

_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")        # RFC 5322 ftext: printable ASCII except ':'
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Transform:
    chain: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeaderEdits:
    """Applied in this order: remove, set (replace or add once), add (append)."""

    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fallback:
    """For a recipient the directory could not resolve. `mailbox` with no address: the account's fallback mailbox."""

    kind: str                      # reject | mailbox | paper
    address: str | None = None


@dataclass(frozen=True)
class Reject:
    code: int = 550
    enhanced: str = "5.7.1"
    text: str = "Message refused by the routing policy"

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(frozen=True)
class Actions:
    disposition: str = "deliver"           # deliver | redirect | hold | reject
    redirect: str | None = None
    hold: str | None = None                # the reason shown to whoever releases it
    reject: Reject | None = None
    transform: Transform | None = None
    headers: HeaderEdits | None = None
    copy_to: tuple[str, ...] = ()
    fallback: Fallback | None = None       # None: settings directory.unresolved applies
    priority: int | None = None
    on_invalid: str | None = None          # None: the transform package's default

    def summary(self) -> str:
        parts = [self.disposition if self.disposition != "redirect" else f"redirect to {self.redirect}"]
        if self.hold:
            parts[0] = f"hold ({self.hold})"
        if self.reject:
            parts[0] = f"reject {self.reject.reply}"
        if self.transform:
            parts.append(f"transform {self.transform.chain}")
        if self.headers:
            parts.append("edit headers")
        if self.copy_to:
            parts.append("copy to " + ", ".join(self.copy_to))
        if self.fallback:
            parts.append(f"fallback {self.fallback.kind}" + (f" {self.fallback.address}" if self.fallback.address
                                                             else ""))
        if self.priority is not None:
            parts.append(f"priority {self.priority}")
        if self.on_invalid:
            parts.append(f"on_invalid {self.on_invalid}")
        return ", ".join(parts)


def compile_actions(src: Source, node: Node, transforms: Collection[str]) -> Actions:
    values: dict[str, Any] = {}
    dispositions: list[tuple[str, Node]] = []
    for key, key_node, value in src.mapping(node, "then"):
        if key in DISPOSITIONS:
            dispositions.append((key, key_node))
        elif key not in MODIFIERS:
            src.error(key_node, f"unknown action {key!r} (expected one of: {', '.join(DISPOSITIONS + MODIFIERS)})")
            continue
        parsed = _PARSERS[key](src, value, transforms)
        if parsed is not _SKIP:
            values[key] = parsed
    if len(dispositions) > 1:
        src.error(dispositions[1][1], "a rule has one of deliver, redirect, hold, reject; found "
                  + " and ".join(d for d, _ in dispositions))
    disposition = dispositions[0][0] if dispositions else "deliver"
    if disposition == "reject":
        extra = [k for k in values if k in MODIFIERS]
        if extra:
            src.error(node, f"reject delivers nothing: remove {', '.join(extra)}")
    values.pop("deliver", None)
    return Actions(disposition=disposition, **{k: v for k, v in values.items() if v is not None})


_SKIP = object()


def _deliver(src: Source, node: Node, transforms) -> Any:
    if is_null(node):
        return _SKIP
    if src.boolean(node, "deliver") is False:
        src.error(node, "deliver: false is meaningless; choose hold or reject instead")
    return _SKIP


def address(src: Source, node: Node, what: str) -> str | None:
    text = src.scalar(node, what)
    if text is None:
        return None
    if not _ADDRESS.match(text):
        src.error(node, f"{what}: {text!r} is not a mail address")
        return None
    return text.lower()


def _redirect(src: Source, node: Node, transforms) -> Any:
    return address(src, node, "redirect")


def _hold(src: Source, node: Node, transforms) -> Any:
    text = src.scalar(node, "hold (the reason)")
    if text is not None and not _one_line(text):
        src.error(node, "hold: the reason must be one line of text")
    return text


def _reject(src: Source, node: Node, transforms) -> Any:
    if is_null(node):
        return Reject()
    fields: dict[str, Any] = {}
    for key, key_node, value in src.mapping(node, "reject"):
        if key == "code":
            code = src.integer(value, "reject.code")
            if code is not None and not (400 <= code <= 599):
                src.error(value, f"reject.code: {code} is not a 4xx or 5xx SMTP reply code")
            else:
                fields["code"] = code
        elif key == "enhanced":
            text = src.scalar(value, "reject.enhanced")
            if text is not None and not _ENHANCED.match(text):
                src.error(value, f"reject.enhanced: {text!r} is not an enhanced status code like 5.7.1")
            else:
                fields["enhanced"] = text
        elif key == "text":
            text = src.scalar(value, "reject.text")
            if text is not None and (not _one_line(text) or not text.isascii()):
                src.error(value, "reject.text: one line of ASCII text (it is sent in the SMTP reply)")
            else:
                fields["text"] = text
        else:
            src.error(key_node, f"reject: unknown key {key!r} (expected code, enhanced, text)")
    if "code" in fields and fields["code"] is not None and "enhanced" not in fields:
        fields["enhanced"] = f"{fields['code'] // 100}.7.1"      # 450 -> 4.7.1, 554 -> 5.7.1
    reject = Reject(**{k: v for k, v in fields.items() if v is not None})
    if reject.enhanced[0] != str(reject.code)[0]:
        src.error(node, f"reject: enhanced code {reject.enhanced} does not agree with reply code {reject.code}")
    return reject


def _transform(src: Source, node: Node, transforms: Collection[str]) -> Any:
    chain_node, params, params_node = node, {}, None
    if isinstance(node, MappingNode):
        chain_node = None
        for key, key_node, value in src.mapping(node, "transform"):
            if key == "chain":
                chain_node = value
            elif key == "params":
                params, params_node = src.plain(value, "transform.params"), value
                if not isinstance(params, dict):
                    src.error(value, "transform.params: expected a mapping")
                    params = {}
            else:
                src.error(key_node, f"transform: unknown key {key!r} (expected chain, params)")
        if chain_node is None:
            src.error(node, "transform: `chain` is required")
            return None
    chain = src.scalar(chain_node, "transform")
    if chain is None:
        return None
    if chain not in transforms:
        src.error(chain_node, f"transform: unknown chain {chain!r} (known: {', '.join(sorted(transforms))})")
        return None
    if isinstance(params_node, MappingNode):
        _check_params(src, chain, params, params_node)
    return Transform(chain, MappingProxyType(params))


def _check_params(src: Source, chain: str, params: dict, node: MappingNode) -> None:
    """A parameter the chain does not read (`chaptre:`, a metadata key misspelt), an unknown time zone or CR-BIO
    chapter: errors at `hub rules check`, not a document silently built with the default."""
    try:
        from hub.transform.build.cda_bio import CHAPTERS
        from hub.transform.chains import PARAMS
        from hub.transform.parse.metadata import KEYS
    except ImportError:                  # the transform package is not installed: chain names only
        return
    known = PARAMS.get(chain)
    if known is None:
        return
    nodes = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
    for name, (key_node, value_node) in nodes.items():
        value = params.get(name)
        if name not in known:
            src.error(key_node, f"transform.params: {chain} has no parameter {name!r} "
                                f"(its parameters: {', '.join(sorted(known)) or 'none'})")
        elif name == "tz" and not _zone(value):
            src.error(value_node, f"transform.params.tz: unknown time zone {value!r}")
        elif name == "chapter" and str(value) not in CHAPTERS:
            src.error(value_node, f"transform.params.chapter: {value!r} is not a CR-BIO chapter "
                                  f"(one of {', '.join(sorted(CHAPTERS))})")
        elif name == "metadata" and isinstance(value_node, MappingNode):
            for meta_key, _ in value_node.value:
                if isinstance(meta_key, ScalarNode) and meta_key.value not in KEYS:
                    src.error(meta_key, f"transform.params.metadata: unknown metadata key {meta_key.value!r} "
                                        "(the flat keys of docs/transform.md §3)")


def _zone(name: Any) -> bool:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(str(name))
        return True
    except (ValueError, KeyError, OSError):      # ZoneInfoNotFoundError is a KeyError
        return False


def _headers(src: Source, node: Node, transforms) -> Any:
    edits: dict[str, Any] = {}
    for key, key_node, value in src.mapping(node, "headers"):
        if key in ("add", "set"):
            pairs = []
            for name, name_node, val in src.mapping(value, f"headers.{key}"):
                text = src.scalar(val, f"headers.{key}.{name}", allow_empty=True)
                if not _HEADER_NAME.match(name):
                    src.error(name_node, f"headers.{key}: {name!r} is not a valid header name")
                elif text is not None and not _one_line(text):
                    src.error(val, f"headers.{key}.{name}: the value must be one line")
                elif text is not None:
                    pairs.append((name, text))
            edits[key] = tuple(pairs)
        elif key == "remove":
            names = []
            for name, name_node in src.scalars(value, "headers.remove"):
                if not _HEADER_NAME.match(name):
                    src.error(name_node, f"headers.remove: {name!r} is not a valid header name")
                else:
                    names.append(name)
            edits[key] = tuple(names)
        else:
            src.error(key_node, f"headers: unknown key {key!r} (expected add, set, remove)")
    return HeaderEdits(**edits)


def _copy_to(src: Source, node: Node, transforms) -> Any:
    out = []
    for _, item in src.scalars(node, "copy_to"):
        addr = address(src, item, "copy_to")
        if addr:
            out.append(addr)
    return tuple(out)


def _fallback(src: Source, node: Node, transforms) -> Any:
    if isinstance(node, MappingNode):
        result = None
        for key, key_node, value in src.mapping(node, "fallback"):
            if key != "mailbox":
                src.error(key_node, f"fallback: unknown key {key!r} (expected mailbox: ADDRESS)")
                continue
            addr = address(src, value, "fallback.mailbox")
            result = Fallback("mailbox", addr) if addr else None
        return result
    text = src.scalar(node, "fallback")
    if text in FALLBACKS:
        return Fallback(text)
    if text == "mailbox":
        return Fallback("mailbox")      # the sender account's configured fallback mailbox
    if text is not None:
        src.error(node, f"fallback: expected reject, paper, mailbox or {{mailbox: ADDRESS}}, found {text!r}")
    return None


def _priority(src: Source, node: Node, transforms) -> Any:
    value = src.integer(node, "priority")
    if value is not None and not (-1000 <= value <= 1000):
        src.error(node, "priority: expected an integer between -1000 and 1000")
        return None
    return value


def _on_invalid(src: Source, node: Node, transforms) -> Any:
    text = src.scalar(node, "on_invalid")
    if text is not None and text not in ON_INVALID:
        src.error(node, f"on_invalid: expected one of {', '.join(ON_INVALID)}, found {text!r}")
        return None
    return text


def _one_line(text: str) -> bool:
    return "\r" not in text and "\n" not in text and "\0" not in text


_PARSERS = {
    "deliver": _deliver, "redirect": _redirect, "hold": _hold, "reject": _reject, "transform": _transform,
    "headers": _headers, "copy_to": _copy_to, "fallback": _fallback, "priority": _priority,
    "on_invalid": _on_invalid,
}
