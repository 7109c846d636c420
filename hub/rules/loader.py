"""Loading a rule set: the files of a directory -> validated, compiled `RuleSet`, or every error with file:line:col.

Pure apart from `read_dir`. A rule set is *the text of its files* (`{file name: text}`); its content hash is the
SHA-256 of that mapping in canonical JSON, which is what the version store compares.

File format (see routing_rules/README.md):

    description: optional text
    scope:                 # optional: matchers ANDed into every rule of this file (e.g. the sender account)
      account: labo-bioxa
    rules:
      - id: bioxa-hprim    # unique across the whole set
        description: optional text
        match: {...}       # absent or empty: matches everything (in scope)
        then: {...}        # absent: deliver

Files are read in file-name order (`*.yaml`, `*.yml`), rules in order; first match wins. The last rule of the set
must be an explicit catch-all (no `match:` and no file `scope:`): nothing is synthesised, so what happens to mail
no rule names is always written down. A catch-all anywhere else makes the following rules unreachable: an error.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Collection, Mapping

from yaml.nodes import MappingNode, Node

from hub.errors import InputError
from hub.rules.actions import Actions, compile_actions
from hub.rules.engine import Rule, RuleSet
from hub.rules.matchers import compile_match
from hub.rules.yamlnodes import RuleError, Source, is_null

SUFFIXES = (".yaml", ".yml")
FILE_KEYS = ("description", "scope", "rules")
RULE_KEYS = ("id", "description", "match", "then")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")

# The chain names hub.transform.chains defines, for the rules tests (transform_names() is the same set, tested).
FALLBACK_TRANSFORMS = frozenset({"hprim_to_cda_xdm", "hl7_oru_to_cda_xdm", "cisis_hl7_to_xdm", "pdf_to_cda_n1_xdm",
                                 "cda_to_xdm", "mss_headers"})


class RulesInvalid(InputError):
    """A rule set that must not become active. `errors` lists every problem found, sorted by file and line."""

    def __init__(self, errors: list[RuleError]):
        self.errors = tuple(sorted(errors))
        first = self.errors[0] if self.errors else "no rules"
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"invalid rule set: {first}{more}")


def content_hash(files: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(sorted(files.items())), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_dir(path: str | Path) -> dict[str, str]:
    """The rule files of a directory (not recursive), by name. Raises RulesInvalid for unreadable files."""
    root = Path(path)
    if not root.is_dir():
        raise RulesInvalid([RuleError(str(root), 1, 1, "rules directory not found")])
    files: dict[str, str] = {}
    errors: list[RuleError] = []
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise RulesInvalid([RuleError(str(root), 1, 1, f"cannot read the rules directory: {exc.strerror}")]) from None
    for entry in entries:
        if entry.suffix not in SUFFIXES or entry.name.startswith("."):
            continue          # a *.yaml that is no readable file (dangling link, directory) is an error below
        try:
            files[entry.name] = entry.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(RuleError(entry.name, 1, 1, f"not UTF-8 text (byte {exc.start})"))
        except OSError as exc:
            errors.append(RuleError(entry.name, 1, 1, f"cannot read: {exc.strerror}"))
    if errors:
        raise RulesInvalid(errors)
    return files


def compile_files(files: Mapping[str, str], transforms: Collection[str], *, version: int = 0) -> RuleSet:
    """Validate and compile; raise RulesInvalid with every error found."""
    errors: list[RuleError] = []
    rules: list[tuple[Rule, bool, Source, Node, bool]] = []   # (rule, is catch-all, source, node, compiled ok)
    for name in sorted(files):
        src = Source(name)
        rules.extend(_compile_file(src, files[name], transforms))
        errors.extend(src.errors)
    if not files:
        errors.append(RuleError("(rules)", 1, 1, "no rule files (*.yaml) found"))
    seen: dict[str, Rule] = {}
    for rule, _, src, node, _ in rules:
        if not _ID.match(rule.id):
            continue
        if rule.id in seen:
            errors.append(_at(src, node, f"duplicate rule id {rule.id!r} (first at {seen[rule.id].where})"))
        else:
            seen[rule.id] = rule
    for i, (rule, catch_all, src, node, _) in enumerate(rules[:-1]):
        if catch_all:
            after, _, asrc, anode, _ = rules[i + 1]
            errors.append(_at(asrc, anode, f"rule {after.id!r} is unreachable: rule {rule.id!r} ({rule.where}) "
                                           "matches everything; a catch-all must be the last rule"))
            break
    if rules and not rules[-1][1] and files:
        rule, _, src, node, _ = rules[-1]
        errors.append(_at(src, node, f"the last rule ({rule.id!r}) must be a catch-all, without `match:` or file "
                                     "`scope:`, saying what happens to all other mail (e.g. 99-catch-all.yaml)"))
    if files and not rules and not errors:
        errors.append(RuleError(sorted(files)[0], 1, 1, "the rule set has no rules"))
    if errors:
        raise RulesInvalid(errors)
    return RuleSet((r for r, *_ in rules), version=version, content_hash=content_hash(files), files=files)


def _at(src: Source, node: Node, message: str) -> RuleError:
    return RuleError(src.name, node.start_mark.line + 1, node.start_mark.column + 1, message)


def _compile_file(src: Source, text: str, transforms: Collection[str]):
    root = src.compose(text)
    if root is None:
        if not src.errors:
            src.error(None, "empty file: expected a mapping with `rules:`")
        return []
    scope_node = rules_node = None
    for key, key_node, value in src.mapping(root, "file"):
        if key == "scope":
            scope_node = value
        elif key == "rules":
            rules_node = value
        elif key == "description":
            src.scalar(value, "description", allow_empty=True)
        else:
            src.error(key_node, f"unknown key {key!r} at the top of a rule file (expected {', '.join(FILE_KEYS)})")
    if rules_node is None:
        if isinstance(root, MappingNode):
            src.error(root, "a rule file needs `rules:`, a list of rules")
        return []
    scope = compile_match(src, scope_node) if scope_node is not None else []
    scope_keys = _keys(scope_node) - {"header"}
    out = []
    items = src.sequence(rules_node, "rules")
    if not items and not src.errors:
        src.error(rules_node, "rules: the list is empty")
    for item in items:
        compiled = _compile_rule(src, item, transforms, scope, scope_keys, scope_node is not None)
        if compiled is not None:
            out.append(compiled)
    return out


def _compile_rule(src: Source, node: Node, transforms, scope, scope_keys, scope_node_present: bool):
    before = len(src.errors)
    fields: dict[str, Node] = {}
    for key, key_node, value in src.mapping(node, "rule"):
        if key not in RULE_KEYS:
            src.error(key_node, f"unknown key {key!r} in a rule (expected {', '.join(RULE_KEYS)})")
        else:
            fields[key] = value
    if not isinstance(node, MappingNode):
        return None
    rule_id = src.scalar(fields["id"], "id") if "id" in fields else None
    if "id" not in fields:
        src.error(node, "rule: `id` is required")
    elif rule_id is not None and not _ID.match(rule_id):
        src.error(fields["id"], f"id: {rule_id!r} must be letters, digits, '_', '.', ':' or '-' (at most 100)")
    description = ""
    if "description" in fields:
        description = src.scalar(fields["description"], "description", allow_empty=True) or ""
    match_node = fields.get("match")
    for key in _keys(match_node) & scope_keys:
        src.error(_key_node(match_node, key), f"match: {key!r} is already set by the file's scope:")
    matchers = compile_match(src, match_node)
    actions = compile_actions(src, fields["then"], transforms) if "then" in fields else Actions()
    line = node.start_mark.line + 1
    rule = Rule(rule_id or f"(rule at line {line})", src.name, line, tuple(scope) + tuple(matchers), actions,
                description)
    # decided on the text, not on what compiled, so that a broken matcher does not look like a catch-all
    catch_all = not scope_node_present and not _keys(match_node) and not _not_a_mapping(match_node)
    return rule, catch_all, src, node, len(src.errors) == before and rule_id is not None


def _not_a_mapping(node: Node | None) -> bool:
    return node is not None and not isinstance(node, MappingNode) and not is_null(node)


def _keys(node: Node | None) -> set[str]:
    if not isinstance(node, MappingNode):
        return set()
    return {k.value for k, _ in node.value if hasattr(k, "value") and isinstance(k.value, str)}


def _key_node(node: MappingNode, key: str) -> Node:
    return next(k for k, _ in node.value if getattr(k, "value", None) == key)


def transform_names(settings=None) -> frozenset[str]:
    """The chain names the transform package defines (`hub.transform.chains.CHAINS`): a rule may name no other.
    `settings` is accepted for the callers' sake; the names do not depend on it (nothing is loaded)."""
    from hub.transform.chains import CHAINS

    return frozenset(CHAINS)
