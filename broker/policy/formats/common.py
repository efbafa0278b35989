"""What both PolicyLayer front ends share: building native nodes, conditions, windows.

Native nodes are built at the position of the foreign node they come from, so a problem the
native compiler finds in a translated document still points into the file the operator wrote.

Conditions (``path``/``op``/``value``) translate operator by operator. PolicyLayer says a
condition on a missing argument *fails*; native ``ne`` and ``not_in`` are true for a missing
path, so they are paired with ``exists: true``. PolicyLayer's ``regex`` searches (Go
``MatchString``); native ``matches`` matches in full, so the pattern is wrapped in ``.*``
on both sides (with dot-all).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.policy.document import (
    Key,
    MappingNode,
    Node,
    Position,
    ScalarNode,
    ScalarValue,
    SequenceNode,
    describe_node,
)
from broker.policy.problems import PolicyProblem

OPERATORS: Final = ("eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists")
_NATIVE_OPERATOR: Final = {"neq": "ne", "regex": "matches"}
WINDOWS: Final = {"minute": "1m", "hour": "1h", "day": "1d"}
CONDITION_KEYS: Final = ("path", "op", "value")


def key(name: str, at: Position) -> Key:
    return Key(name, at.line, at.column)


def scalar(value: ScalarValue, at: Position) -> ScalarNode:
    return ScalarNode(value, at.line, at.column)


def mapping(entries: Sequence[tuple[str, Node]], at: Position) -> MappingNode:
    return MappingNode(tuple((key(name, at), value) for name, value in entries), at.line, at.column)


def sequence(items: Sequence[Node], at: Position) -> SequenceNode:
    return SequenceNode(tuple(items), at.line, at.column)


@dataclass
class Problems:
    source: str
    found: list[PolicyProblem] = field(default_factory=list)

    def fail(self, at: Position, message: str) -> None:
        self.found.append(PolicyProblem(self.source, at.line, at.column, message))

    def unknown_keys(self, node: MappingNode, allowed: Sequence[str], where: str) -> None:
        for entry_key, _ in node:
            if entry_key.name not in allowed:
                self.fail(entry_key, f"unknown key '{entry_key.name}' {where} (keys: {', '.join(allowed)})")

    def text(self, node: Node | None, what: str, at: Position) -> str | None:
        if node is None:
            self.fail(at, f"missing '{what}'")
            return None
        if isinstance(node, ScalarNode) and isinstance(node.value, str) and node.value.strip():
            return node.value
        self.fail(node, f"{what} must be a non-empty string, got {describe_node(node)}")
        return None

    def items(self, node: Node | None, what: str) -> tuple[Node, ...]:
        if node is None or (isinstance(node, ScalarNode) and node.value is None):
            return ()
        if isinstance(node, SequenceNode):
            return node.items
        self.fail(node, f"{what} must be a list, got {describe_node(node)}")
        return ()


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``{path, op, value}`` condition, checked but not yet translated."""

    path: str
    op: str
    value: Node
    at: MappingNode
    path_node: Node


def read_condition(node: Node, problems: Problems, *, state_allowed: bool) -> Condition | None:
    if not isinstance(node, MappingNode):
        problems.fail(
            node, f"a condition must be a mapping with path, op and value, got {describe_node(node)}"
        )
        return None
    problems.unknown_keys(node, CONDITION_KEYS, "in a condition")
    path = problems.text(node.get("path"), "path", node)
    op = problems.text(node.get("op"), "op", node)
    value = node.get("value")
    if value is None:
        problems.fail(node, "missing 'value'")
    if path is None or op is None or value is None:
        return None
    path_node = node.get("path")
    assert path_node is not None
    prefixes = ("args.", "state.") if state_allowed else ("args.",)
    if not path.startswith(prefixes):
        problems.fail(
            path_node, f'path must start with {" or ".join(repr(p) for p in prefixes)}, got "{path}"'
        )
        return None
    if op not in OPERATORS:
        op_node = node.get("op")
        assert op_node is not None
        problems.fail(op_node, f'unknown operator "{op}" (operators: {", ".join(OPERATORS)})')
        return None
    if op == "regex" and not (isinstance(value, ScalarNode) and isinstance(value.value, str)):
        problems.fail(value, "regex value must be a string")
        return None
    if op == "regex":
        try:
            re.compile(str(value.value))  # type: ignore[union-attr]
        except re.error as error:
            problems.fail(value, f'invalid regex "{value.value}": {error}')  # type: ignore[union-attr]
            return None
    return Condition(path, op, value, node, path_node)


def native_tests(conditions: Sequence[Condition]) -> MappingNode:
    """A native ``when``/``unless`` mapping that holds exactly when every condition passes."""
    by_path: dict[str, list[tuple[Key, Node]]] = {}
    first: dict[str, Condition] = {}
    for condition in conditions:
        tests = by_path.setdefault(condition.path, [])
        first.setdefault(condition.path, condition)
        if condition.op in ("neq", "not_in"):
            tests.append((key("exists", condition.value), scalar(True, condition.value)))
        operand: Node = condition.value
        if condition.op == "regex":
            assert isinstance(condition.value, ScalarNode)
            operand = scalar(f"(?s:.*?)(?:{condition.value.value})(?s:.*)", condition.value)
        tests.append((key(_NATIVE_OPERATOR.get(condition.op, condition.op), condition.at), operand))
    entries = tuple(
        (
            key(path, first[path].path_node),
            MappingNode(tuple(tests), first[path].at.line, first[path].at.column),
        )
        for path, tests in by_path.items()
    )
    anchor = conditions[0].at
    return MappingNode(entries, anchor.line, anchor.column)


def window(node: Node | None, what: str, at: Position, problems: Problems) -> str | None:
    if isinstance(node, ScalarNode) and node.value in WINDOWS:
        return WINDOWS[str(node.value)]
    shown = describe_node(node) if node is not None else "nothing"
    problems.fail(node if node is not None else at, f'{what} must be "minute", "hour", or "day", got {shown}')
    return None


def count_limit(
    *, at: Position, bound: tuple[str, Node], window_text: str, per: str, counter: str, reason: str | None
) -> MappingNode:
    """A native ``count: true`` limit over a calendar-aligned UTC window."""
    entries: list[tuple[str, Node]] = [("count", scalar(True, at)), bound]
    entries += [
        ("window", scalar(window_text, at)),
        ("align", scalar("calendar", at)),
        ("per", scalar(per, at)),
        ("counter", scalar(counter, at)),
    ]
    if reason is not None:
        entries.append(("reason", scalar(reason, at)))
    return mapping(entries, at)
