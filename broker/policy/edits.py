"""The ``editable`` setting of a require_approval rule (approve with edits).

::

    editable: [quantity, price]

Approvers of a call held by this rule may change these top-level arguments before approving
(see broker.approvals.edits for what an edit may do and how it is re-decided). Every other argument
can never change. Refused with the position of the value at fault: a value that is not a non-empty
list of argument names, an entry that is not a plain name (``args.x``, ``a.b``: only top-level
arguments are editable) or repeats one.

Whether the tools the rule can hold have those arguments is not something the policy knows: it is
checked against each upstream tool's ``inputSchema`` ``properties`` once the upstreams' tools are
known (`unknown_fields`, at start-up and by ``broker policy check --servers``), and again when an
approver edits (an argument the tool's schema lacks is refused then too).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Final, NamedTuple

from broker.policy.document import Fail, Node, ScalarNode, SequenceNode, describe_node
from broker.policy.engine import Policy

_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def parse_editable(node: Node, fail: Fail) -> tuple[str, ...]:
    """The editable argument names; () after reporting a problem through `fail`."""
    if not isinstance(node, SequenceNode) or not node.items:
        fail(
            node,
            f"editable must be a non-empty list of argument names, e.g. [quantity, price]; got {describe_node(node)}",
        )
        return ()
    names: list[str] = []
    for item in node.items:
        value = item.value if isinstance(item, ScalarNode) else None
        if not isinstance(value, str) or not _NAME.match(value):
            fail(
                item,
                "each entry of editable must be the name of a top-level argument (like quantity), "
                f"got {describe_node(item)}",
            )
            return ()
        if value in names:
            fail(item, f"editable names '{value}' twice")
            return ()
        names.append(value)
    return tuple(names)


class ToolArguments(NamedTuple):
    """An upstream tool as far as `unknown_fields` needs it."""

    server: str
    name: str
    properties: Collection[str] | None
    """The ``properties`` of its inputSchema; None when the schema names none (anything goes)."""


def unknown_fields(policy: Policy, tools: Iterable[ToolArguments]) -> list[tuple[int, str]]:
    """(line, ``rule R: ...``) for every editable field a tool the rule matches by name lacks."""
    found: list[tuple[int, str]] = []
    listed = list(tools)
    for rule in policy.rules:
        if rule.approval is None or not rule.approval.editable:
            continue
        for tool in listed:
            if tool.properties is None:
                continue
            if not (rule.pattern.matches(tool.name) or rule.pattern.matches(f"{tool.server}__{tool.name}")):
                continue
            missing = [name for name in rule.approval.editable if name not in tool.properties]
            if missing:
                has = ", ".join(sorted(tool.properties)) or "none"
                found.append(
                    (
                        rule.line,
                        f"rule {rule.name}: editable {', '.join(repr(name) for name in missing)} "
                        f"{'is not an argument' if len(missing) == 1 else 'are not arguments'} of tool "
                        f"'{tool.name}' on upstream '{tool.server}' (its arguments: {has})",
                    )
                )
    return found


def schema_properties(input_schema: object) -> Collection[str] | None:
    """The argument names an inputSchema declares, or None when it declares none."""
    if not isinstance(input_schema, dict):
        return None
    properties = input_schema.get("properties")
    if not isinstance(properties, dict):
        return None
    return frozenset(str(name) for name in properties)
