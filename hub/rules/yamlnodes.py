"""Reading rule files as PyYAML *nodes*, so that every value keeps its file:line:column.

We never let PyYAML construct Python objects: scalars are read as their source text, typed by this package (no
YAML 1.1 surprises such as `no` -> False or `08:30` -> 510). Errors are collected, not raised, so that
`hub rules check` can report every one of them. Aliases and merge keys are refused (rules are short, explicit data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

NULL_TAG = "tag:yaml.org,2002:null"
BOOL_TAG = "tag:yaml.org,2002:bool"
STR_TAG = "tag:yaml.org,2002:str"
# libyaml when available (same nodes and marks, several times faster); the pure-Python loader otherwise
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, order=True)
class RuleError:
    """One problem in the rule set, located in its file. Lines and columns count from 1."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


@dataclass
class Source:
    """One file being read, and the errors found in it so far."""

    name: str
    errors: list[RuleError] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    def error(self, where: Node | Any | None, message: str) -> None:
        mark = getattr(where, "start_mark", where)
        line = getattr(mark, "line", -1) + 1
        column = getattr(mark, "column", -1) + 1
        self.errors.append(RuleError(self.name, max(line, 1), max(column, 1), message))

    def where(self, node: Node) -> str:
        return f"{self.name}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"

    # --- reading nodes -------------------------------------------------------------------------------------------

    def compose(self, text: str) -> Node | None:
        try:
            aliases = [e for e in yaml.parse(text, Loader=_LOADER) if isinstance(e, yaml.AliasEvent)]
            for event in aliases:
                self.error(event.start_mark, "YAML aliases (*name) are not supported in rule files; "
                                             "write the value out")
            return None if aliases else yaml.compose(text, Loader=_LOADER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            self.error(mark, f"YAML syntax: {exc.problem or exc.context}")
        except yaml.YAMLError as exc:  # pragma: no cover - PyYAML raises marked errors for syntax
            self.errors.append(RuleError(self.name, 1, 1, f"YAML: {exc}"))
        return None

    def _first_visit(self, node: Node) -> bool:
        """Aliases reuse the same node object: refuse them (they also guard against alias bombs)."""
        if id(node) in self._seen:
            self.error(node, "YAML aliases (*name) are not supported in rule files; write the value out")
            return False
        self._seen.add(id(node))
        return True

    def mapping(self, node: Node, what: str) -> Iterator[tuple[str, Node, Node]]:
        """(key, key node, value node) for each entry; reports non-mappings, non-scalar and duplicate keys."""
        if not isinstance(node, MappingNode):
            self.error(node, f"{what}: expected a mapping, found {kind(node)}")
            return
        if not self._first_visit(node):
            return
        seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, f"{what}: keys must be plain names")
                continue
            key = key_node.value
            if key == "<<":
                self.error(key_node, "YAML merge keys (<<) are not supported in rule files")
                continue
            if key in seen:
                self.error(key_node, f"{what}: duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})")
                continue
            seen[key] = key_node
            yield key, key_node, value_node

    def sequence(self, node: Node, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what}: expected a list, found {kind(node)}")
            return []
        if not self._first_visit(node):
            return []
        return list(node.value)

    def scalar(self, node: Node, what: str, *, allow_empty: bool = False) -> str | None:
        if not isinstance(node, ScalarNode):
            self.error(node, f"{what}: expected a single value, found {kind(node)}")
            return None
        if is_null(node) and not allow_empty:
            self.error(node, f"{what}: a value is required")
            return None
        return "" if is_null(node) else node.value

    def scalars(self, node: Node, what: str) -> list[tuple[str, Node]]:
        """A single value or a list of values (OR)."""
        items = self.sequence(node, what) if isinstance(node, SequenceNode) else [node]
        out = []
        for item in items:
            value = self.scalar(item, what, allow_empty=True)
            if value is not None:
                out.append((value, item))
        if isinstance(node, SequenceNode) and not items:
            self.error(node, f"{what}: the list is empty")
        return out

    def integer(self, node: Node, what: str) -> int | None:
        text = self.scalar(node, what)
        if text is None:
            return None
        try:
            return int(text.replace("_", ""), 10)
        except ValueError:
            self.error(node, f"{what}: expected an integer, found {text!r}")
            return None

    def boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == BOOL_TAG:
            return node.value.lower() in ("true", "yes", "on", "y")
        self.error(node, f"{what}: expected true or false")
        return None

    def plain(self, node: Node, what: str) -> Any:
        """Parameters for a transform: mappings, lists and scalars typed as YAML would (strings kept as text)."""
        if isinstance(node, MappingNode):
            return {k: self.plain(v, f"{what}.{k}") for k, _, v in self.mapping(node, what)}
        if isinstance(node, SequenceNode):
            return [self.plain(v, what) for v in self.sequence(node, what)]
        if is_null(node):
            return None
        if node.tag == BOOL_TAG:
            return node.value.lower() in ("true", "yes", "on", "y")
        if node.tag == "tag:yaml.org,2002:int":
            try:
                return int(node.value.replace("_", ""), 10)
            except ValueError:
                return node.value
        if node.tag == "tag:yaml.org,2002:float":
            try:
                return float(node.value)
            except ValueError:
                return node.value
        return node.value


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_null(node):
        return "nothing"
    return f"{node.value!r}"
