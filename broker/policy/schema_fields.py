"""Small checked readers the policy schema's parts share: strings, lists, durations, patterns.

Each reports what is wrong through `fail` (with the node's position) and returns None, so a
compiler carries on and reports every problem of a document at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from broker.policy.document import (
    Fail,
    Key,
    MappingNode,
    Node,
    Position,
    ScalarNode,
    SequenceNode,
    describe_node,
)
from broker.policy.duration import parse_duration


def suggestion(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def reject_unknown_keys(mapping: MappingNode, allowed: Sequence[str], where: str, fail: Fail) -> None:
    for key, _ in mapping:
        if key.name not in allowed:
            fail(key, f"unknown key '{key.name}' {where}{suggestion(key.name, allowed)}")


def non_empty_string(node: Node, what: str, fail: Fail) -> str | None:
    if isinstance(node, ScalarNode) and isinstance(node.value, str) and node.value.strip():
        return node.value
    fail(node, f"{what} must be a non-empty string, got {describe_node(node)}")
    return None


def string_list(node: Node, what: str, fail: Fail, *, allow_empty: bool) -> tuple[str, ...] | None:
    if not isinstance(node, SequenceNode):
        example = {"agents": '["trading-bot"]', "show_first": '["to", "subject"]'}.get(what, '["..."]')
        fail(node, f"{what} must be a list, e.g. {what}: {example}; got {describe_node(node)}")
        return None
    if not node.items and not allow_empty:
        fail(node, f"{what} must not be empty (leave it out to apply to every agent)")
        return None
    values = [non_empty_string(item, f"each entry of {what}", fail) for item in node.items]
    strings = [value for value in values if value is not None]
    return tuple(strings) if len(strings) == len(values) else None


def duration(node: Node | None, what: str, owner: MappingNode, fail: Fail) -> float | None:
    if node is None:
        fail(owner, f"missing '{what.rpartition('.')[2]}' ({what}, in seconds or like '1m')")
        return None
    try:
        return parse_duration(node.value if isinstance(node, ScalarNode) else None)
    except ValueError as error:
        fail(node, f"{what} {error}")
        return None


def pattern_text(node: Position, what: str, fail: Fail) -> str | None:
    if isinstance(node, Key):
        text = node.name
    elif isinstance(node, ScalarNode) and isinstance(node.value, str):
        text = node.value
    else:
        fail(node, f"{what} must be a tool name or glob string, got {describe_node(node)}")
        return None
    if not text.strip():
        fail(node, f"{what} must not be empty")
        return None
    if text != text.strip():
        fail(node, f"{what} '{text}' has leading or trailing whitespace")
        return None
    return text
