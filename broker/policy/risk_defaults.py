"""Risk-aware defaults: what a tool no rule names gets, given how risky the catalogue rates it.

A policy may say::

    default: allow
    risk_defaults:
      high: require_approval        # high and critical tools are held for a human ...
      critical: {action: deny}      # ... except critical ones, which are refused

An entry applies to tools rated at its level *or above*, unless a higher level has an entry
of its own; of the entries that apply the strictest wins, so ``high: deny`` with
``critical: require_approval`` still denies critical tools. The order of strictness is
allow < require_approval < deny, and an entry must be stricter than the policy's
``default`` (a positioned error otherwise): the rating comes from names and descriptions the
upstream chose, which may lie, so it may only ever tighten the answer, never loosen it.
Rules always win over risk defaults: a risk default only answers when no rule applies.

This module is pure: the engine is handed a risk level as a string ("low", "medium", "high",
"critical", as `broker.catalogue.Risk` values); a tool without a rating gets the plain
default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from broker.policy.decision import Action, ApprovalRequirement, Decision
from broker.policy.document import Fail, MappingNode, Node, ScalarNode, describe_node

RISK_LEVELS: Final = ("low", "medium", "high", "critical")
"""From least to most risky."""

STRICTNESS: Final = {Action.ALLOW: 0, Action.REQUIRE_APPROVAL: 1, Action.DENY: 2, Action.HIDE: 3}
RISK_ACTIONS: Final = (Action.REQUIRE_APPROVAL, Action.DENY)


@dataclass(frozen=True, slots=True)
class RiskDefault:
    """One ``risk_defaults`` entry as written: its level, action and approval settings."""

    level: str
    action: Action
    approval: ApprovalRequirement | None


def risk_rule_name(risk: str, action: Action) -> str:
    return f"default (risk: {risk} \u2192 {action})"


def effective_risk_decisions(entries: Mapping[str, RiskDefault], default: Decision) -> dict[str, Decision]:
    """For each risk level, the decision a tool no rule names gets, when stricter than `default`.

    A level is left out when the plain default is at least as strict as every entry covering it.
    The decision names the tool's own level and says which entry it came from.
    """
    effective: dict[str, Decision] = {}
    current: RiskDefault | None = None
    for level in RISK_LEVELS:
        own = entries.get(level)
        if own is not None and (current is None or STRICTNESS[own.action] > STRICTNESS[current.action]):
            current = own
        if current is None or STRICTNESS[current.action] <= STRICTNESS[default.action]:
            continue
        source = "" if current.level == level else f" (the {current.level} entry covers the levels above it)"
        effective[level] = Decision(
            current.action,
            risk_rule_name(level, current.action),
            f"no rule matches; the catalogue rates this tool {level} risk, so it gets "
            f"{current.action} instead of the default {default.action}{source}",
            default.revision,
            approval=current.approval,
        )
    return effective


EntryParser = Callable[[Node, str], "tuple[Action, ApprovalRequirement | None] | None"]


def parse_risk_defaults(
    node: Node | None, default: Action, parse_entry: EntryParser, fail: Fail
) -> dict[str, RiskDefault]:
    """The ``risk_defaults`` mapping, level -> entry; every problem goes to `fail` with its position."""
    if node is None or (isinstance(node, ScalarNode) and node.value is None):
        return {}
    if not isinstance(node, MappingNode):
        fail(
            node,
            f"risk_defaults must be a mapping like {{critical: require_approval}}, got {describe_node(node)}",
        )
        return {}
    entries: dict[str, RiskDefault] = {}
    for key, value in node:
        if key.name not in RISK_LEVELS:
            fail(key, f"unknown risk level '{key.name}' in risk_defaults (levels: {', '.join(RISK_LEVELS)})")
            continue
        found = parse_entry(value, f"risk_defaults.{key.name}")
        if found is None:
            continue
        action, approval = found
        if STRICTNESS[action] <= STRICTNESS[default]:
            fail(
                value,
                f"risk_defaults.{key.name} is {action}, which is not stricter than the default {default}: "
                "a risk default may only make the answer stricter (allow < require_approval < deny)",
            )
            continue
        entries[key.name] = RiskDefault(key.name, action, approval)
    return entries
