"""The ``quorum`` setting of a require_approval rule (four-eyes approval).

Two spellings::

    quorum: 2                                      # two distinct approvers of the rule
    quorum: {approvals: 2, from: ["@risk", "@trading"]}   # one of @risk and one of @trading

``approvals`` defaults to the number of ``from`` groups. Each ``from`` group needs its own approver
(one person in both groups covers one of them), so ``approvals`` may not be smaller than the list.
Refused with the position of the value at fault:

* ``approvals`` not a whole number of at least 1, or ``from`` entries that are not ``@group``
  names (or repeat one);
* a ``from`` group that the rule's ``approvers`` do not name, when they list any and not ``*``;
* a quorum larger than the named people, when ``approvers`` lists only individual names.

Whether the approvers configured in broker.yaml can ever reach the quorum is checked at start-up
(`broker.approvals.eligibility.unreachable_quorums`): the policy alone does not know the people.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from broker.policy.document import Fail, MappingNode, Node, ScalarNode, SequenceNode, describe_node

QUORUM_KEYS: Final = ("approvals", "from")
_SHAPE: Final = 'quorum: 2, or quorum: {approvals: 2, from: ["@risk", "@trading"]}'


def parse_quorum(node: Node, approvers: Sequence[str], fail: Fail) -> tuple[int, tuple[str, ...]]:
    """(approvals, from groups); (1, ()) after reporting a problem through `fail`."""
    if isinstance(node, ScalarNode):
        approvals = _approvals(node, fail)
        groups: tuple[str, ...] = ()
    elif isinstance(node, MappingNode):
        for key, _ in node:
            if key.name not in QUORUM_KEYS:
                fail(key, f"unknown key '{key.name}' in quorum (keys: {', '.join(QUORUM_KEYS)})")
                return 1, ()
        from_node = node.get("from")
        groups = () if from_node is None else _groups(from_node, approvers, fail)
        approvals_node = node.get("approvals")
        if approvals_node is None and from_node is None:
            fail(node, f"quorum needs 'approvals' or 'from': {_SHAPE}")
            return 1, ()
        approvals = max(len(groups), 1) if approvals_node is None else _approvals(approvals_node, fail)
        if approvals and approvals < len(groups):
            fail(
                approvals_node or node,
                f"quorum.approvals is {approvals} but quorum.from names {len(groups)} groups, "
                "and each group needs an approver of its own",
            )
            return 1, ()
    else:
        fail(node, f"quorum must be {_SHAPE}; got {describe_node(node)}")
        return 1, ()
    if approvals is None:
        return 1, ()
    named = {entry for entry in approvers if entry != "*" and not entry.startswith("@")}
    if approvers and len(named) == len(set(approvers)) and approvals > len(named):
        fail(
            node,
            f"quorum asks for {approvals} distinct approvers but the rule's approvers name only "
            f"{len(named)} ({', '.join(sorted(named))})",
        )
        return 1, ()
    return approvals, groups


def _approvals(node: Node, fail: Fail) -> int | None:
    value = node.value if isinstance(node, ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(node, f"quorum approvals must be a whole number of at least 1, got {describe_node(node)}")
        return None
    return value


def _groups(node: Node, approvers: Sequence[str], fail: Fail) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode) or not node.items:
        fail(
            node, f'quorum.from must be a non-empty list of groups like ["@risk"], got {describe_node(node)}'
        )
        return ()
    groups: list[str] = []
    listed = bool(approvers) and "*" not in approvers
    for item in node.items:
        value = item.value if isinstance(item, ScalarNode) else None
        if not isinstance(value, str) or not value.startswith("@") or len(value) < 2:
            fail(item, f"each entry of quorum.from must be a group like '@risk', got {describe_node(item)}")
        elif value in groups:
            fail(item, f"quorum.from names {value} twice")
        elif listed and value not in approvers:
            fail(
                item,
                f"quorum.from names {value}, which is not among the rule's approvers ({', '.join(approvers)})",
            )
        else:
            groups.append(value)
            continue
        return ()
    return tuple(groups)
