"""A rule's approval settings (``timeout``, ``approvers``, ``quorum``, ``grant``, ...) as written
on a require_approval rule, on ``default`` or on a ``risk_defaults`` entry."""

from __future__ import annotations

from typing import Final

from broker.policy.decision import Action, ApprovalRequirement
from broker.policy.document import Fail, MappingNode, Node, ScalarNode, describe_node
from broker.policy.edits import parse_editable
from broker.policy.escalation import parse_escalation
from broker.policy.grants import parse_grant
from broker.policy.quorum import parse_quorum
from broker.policy.schema_fields import duration, string_list

APPROVAL_KEYS: Final = (
    "timeout",
    "on_timeout",
    "approvers",
    "channels",
    "hold_budget",
    "quorum",
    "escalate",
    "editable",
    "grant",
)


def parse_approval(body: MappingNode, action: Action | None, fail: Fail) -> ApprovalRequirement | None:
    """The approval settings of a require_approval entry; None (after reporting any setting given
    anyway) for other actions."""
    present = [(key, value) for key, value in body if key.name in APPROVAL_KEYS]
    if action is not Action.REQUIRE_APPROVAL:
        if action is not None:
            for key, _ in present:
                fail(
                    key,
                    f"'{key.name}' only applies to require_approval rules, and this rule is '{action}'",
                )
        return None
    requirement = ApprovalRequirement()
    timeout, on_timeout = requirement.timeout_seconds, requirement.on_timeout
    approvers, channels = requirement.approvers, requirement.channels
    hold_budget = requirement.hold_budget_seconds
    quorum_node: Node | None = None
    escalate_node: Node | None = None
    editable: tuple[str, ...] = ()
    grant = None
    for key, value in present:
        if key.name == "timeout":
            timeout = duration(value, "timeout", body, fail) or timeout
        elif key.name == "hold_budget":
            hold_budget = duration(value, "hold_budget", body, fail) or hold_budget
        elif key.name == "on_timeout":
            if isinstance(value, ScalarNode) and value.value == "deny":
                on_timeout = "deny"
            else:
                fail(
                    value,
                    "on_timeout must be 'deny' (the only choice in policy version 1), "
                    f"got {describe_node(value)}",
                )
        elif key.name == "approvers":
            approvers = string_list(value, "approvers", fail, allow_empty=True) or ()
        elif key.name == "quorum":
            quorum_node = value
        elif key.name == "escalate":
            escalate_node = value
        elif key.name == "editable":
            editable = parse_editable(value, fail)
        elif key.name == "grant":
            grant = parse_grant(value, fail)
        else:
            channels = string_list(value, "channels", fail, allow_empty=True) or ()
    quorum, quorum_from = (1, ()) if quorum_node is None else parse_quorum(quorum_node, approvers, fail)
    return ApprovalRequirement(
        timeout_seconds=timeout,
        on_timeout=on_timeout,
        approvers=approvers,
        channels=channels,
        hold_budget_seconds=hold_budget,
        quorum=quorum,
        quorum_from=quorum_from,
        escalation=() if escalate_node is None else parse_escalation(escalate_node, timeout, fail),
        editable=editable,
        grant=grant,
    )
