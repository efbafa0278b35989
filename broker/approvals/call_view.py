"""A held call as people read it: its arguments in the order that helps an approver decide.

One place decides this for the web inbox, Slack, the CLI and the API, so every surface shows
the same fields in the same order.

Order
    1. Decisive fields: the arguments the rule's ``show_first`` names (in its order), then
       the ones its ``when`` conditions test (in the order they are written; ``args.order.qty``
       makes ``order`` decisive). The rule is looked up in the policy in force only when that
       policy is the one that held the call (same revision); otherwise the view says that the
       policy changed, and nothing is marked decisive.
    2. The rest in the agent's own order (`Approval.argument_order`); arguments of approvals
       stored before that order was kept follow in key order.

Shape of a field (strings show as their text, line breaks as line breaks; other values as JSON)
    ``short``      one line of at most `SHORT_LIMIT` characters: inline, never cut.
    ``multiline``  a block: a string with line breaks, a longer line, or a structured value as
                   indented JSON; at most `FOLD_LIMIT` characters and `FOLD_LINES` lines.
    ``long``       anything bigger: a surface shows `CallField.preview` (its first
                   `PREVIEW_LINES` lines, at most `PREVIEW_CHARS` characters) and says where
                   the whole value is ("show all" on the web, the thread in Slack).

A long field never takes room from a short one: surfaces lay out the short fields first and
cut only long ones.

The condition that held the call is rendered with the value it saw, ``quantity = 250 > 100``.

`CallContexts` is the port through which channels get a call's view together with what the
broker knows around it (the tool's description and catalogue rating, who waits for the answer,
the last decisions on the same tool and agent); `broker.channels.call_context` implements it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Protocol

from broker.approvals.model import Approval, ApprovalStatus
from broker.policy import Condition, Policy
from broker.policy.conditions import MISSING, PATH_PREFIX
from broker.policy.decision import Action
from broker.policy.rules import CompiledRule

SHORT_LIMIT: Final = 160
FOLD_LIMIT: Final = 800
FOLD_LINES: Final = 15
PREVIEW_CHARS: Final = 300
PREVIEW_LINES: Final = 6
CONDITION_VALUE_LIMIT: Final = 60
RECENT_DECISIONS: Final = 5

RECENT_STATUSES: Final = frozenset(
    {
        ApprovalStatus.APPROVED,
        ApprovalStatus.RELEASED,
        ApprovalStatus.COMPLETED,
        ApprovalStatus.FAILED,
        ApprovalStatus.DENIED,
        ApprovalStatus.EXPIRED,
        ApprovalStatus.OUTCOME_UNKNOWN,
    }
)
"""Statuses that record a decision (a human's or the deadline's); a cancelled call had none."""

_SYMBOLS: Final = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "ne": "!=", "eq": "="}


class Shape(enum.StrEnum):
    SHORT = "short"
    MULTILINE = "multiline"
    LONG = "long"


@dataclass(frozen=True, slots=True)
class CallField:
    """One top-level argument as shown to people."""

    name: str
    value: Any
    text: str
    """The value as read: a string's own text, anything else as JSON."""
    shape: Shape
    decisive: bool
    """Named by the rule's ``show_first`` or tested by its ``when``."""

    @property
    def size(self) -> int:
        return len(self.text)

    @property
    def preview(self) -> str:
        """The text of a short or multi-line field; the start of a long one (without an ellipsis)."""
        if self.shape is not Shape.LONG:
            return self.text
        head = "\n".join(self.text.split("\n", PREVIEW_LINES)[:PREVIEW_LINES])
        return head[:PREVIEW_CHARS]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "text": self.text,
            "shape": self.shape.value,
            "decisive": self.decisive,
            "size": self.size,
        }


@dataclass(frozen=True, slots=True)
class MatchedCondition:
    path: str
    """The condition's path without ``args.`` (``quantity``, ``order.legs.0.qty``)."""
    text: str
    """What it saw, e.g. ``quantity = 250 > 100``."""
    holds: bool


@dataclass(frozen=True, slots=True)
class HoldReason:
    """Which rule held the call and, when the policy is still the one that held it, on what condition."""

    rule: str
    reason: str
    conditions: tuple[MatchedCondition, ...] = ()
    show_first: tuple[str, ...] = ()
    policy_changed: str | None = None
    """Set when the policy in force is not the one that held the call."""

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "reason": self.reason,
            "conditions": [{"path": c.path, "text": c.text, "holds": c.holds} for c in self.conditions],
            "show_first": list(self.show_first),
            "policy_changed": self.policy_changed,
        }


@dataclass(frozen=True, slots=True)
class CallView:
    fields: tuple[CallField, ...]
    hold: HoldReason

    @property
    def long_fields(self) -> tuple[CallField, ...]:
        return tuple(field for field in self.fields if field.shape is Shape.LONG)


def call_view(approval: Approval, policy: Policy | None) -> CallView:
    """The approval's fields in reading order, and why it was held. `policy` is the one in force;
    without one (a caller that has none) the fields keep the agent's order."""
    hold, rule = _hold_reason(approval, policy)
    decisive: list[str] = []
    if rule is not None:
        wanted = [*rule.show_first, *(_top_level(condition.path) for condition in rule.conditions)]
        decisive = [name for name in dict.fromkeys(wanted) if name in approval.arguments]
    rest = [name for name in approval.argument_order if name in approval.arguments]
    order = list(dict.fromkeys([*decisive, *rest, *approval.arguments]))
    chosen = set(decisive)
    fields = tuple(_field(name, approval.arguments[name], name in chosen) for name in order)
    return CallView(fields, hold)


def field_text(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    compact = json.dumps(value, ensure_ascii=False, default=str)
    if len(compact) <= SHORT_LIMIT or not isinstance(value, dict | list):
        return compact
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def shape_of(text: str) -> Shape:
    if len(text) <= SHORT_LIMIT and "\n" not in text:
        return Shape.SHORT
    if len(text) <= FOLD_LIMIT and text.count("\n") < FOLD_LINES:
        return Shape.MULTILINE
    return Shape.LONG


def matched_condition(condition: Condition, arguments: Mapping[str, Any]) -> MatchedCondition:
    """`condition` as it applied to these arguments, with the value it saw."""
    path = condition.path.removeprefix(PATH_PREFIX)
    value = condition.resolve(arguments)
    holds = condition.test(value)
    operator, operand = condition.operator, _clipped_json(condition.operand)
    if operator == "exists":
        present = value is not MISSING
        text = f"{path} is {'present' if present else 'missing'}"
    elif value is MISSING:
        text = f"{path} is missing"
    elif operator == "contains":
        text = f"{path} contains {operand}"
    else:
        shown = f"{path} = {_clipped_json(value)}"
        if operator == "eq" and holds:
            text = shown
        elif operator in _SYMBOLS:
            text = f"{shown} {_SYMBOLS[operator]} {operand}"
        elif operator == "in":
            text = f"{shown}, one of {operand}"
        elif operator == "not_in":
            text = f"{shown}, not one of {operand}"
        else:
            text = f"{shown} {operator} {operand}"
    return MatchedCondition(path, text, holds)


def _hold_reason(approval: Approval, policy: Policy | None) -> tuple[HoldReason, CompiledRule | None]:
    if policy is None:
        return HoldReason(approval.rule, approval.rule_reason), None
    if policy.revision != approval.policy_revision:
        changed = (
            f"the policy changed since this call was held (revision {approval.policy_revision}, "
            f"now {policy.revision}); the conditions that held it are not known"
        )
        return HoldReason(approval.rule, approval.rule_reason, policy_changed=changed), None
    rule = _rules_by_name(policy).get(approval.rule)
    if rule is None:
        return HoldReason(approval.rule, approval.rule_reason), None
    conditions = tuple(matched_condition(condition, approval.arguments) for condition in rule.conditions)
    return HoldReason(approval.rule, approval.rule_reason, conditions, rule.show_first), rule


@lru_cache(maxsize=8)
def _rules_by_name(policy: Policy) -> dict[str, CompiledRule]:
    # A policy never changes once loaded, so its index is kept for the few most recent ones.
    return {rule.name: rule for rule in policy.rules if rule.action is Action.REQUIRE_APPROVAL}


def _top_level(path: str) -> str:
    return path.removeprefix(PATH_PREFIX).split(".", 1)[0]


def _field(name: str, value: Any, decisive: bool) -> CallField:
    text = field_text(value)
    return CallField(name, value, text, shape_of(text), decisive)


def _clipped_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= CONDITION_VALUE_LIMIT:
        return text
    return text[: CONDITION_VALUE_LIMIT - 1] + "…"


# -- what surrounds the call --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolFacts:
    """What the upstream says about the tool, and how the catalogue rates it."""

    listed: bool
    """The upstream lists the tool right now (else nothing below is known)."""
    title: str | None = None
    description: str | None = None
    category: str | None = None
    risk: str | None = None
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "title": self.title,
            "description": self.description,
            "category": self.category,
            "risk": self.risk,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class Waiting:
    """Who is waiting for the answer."""

    callers: int
    """Agent requests this approval answers (the first and every identical call attached)."""
    held_here: int
    """Agent requests held open for the answer in this broker process right now (other
    replicas may hold more)."""
    told_at: datetime | None
    """When an agent was given the "pending approval" answer and told to come back."""

    @property
    def summary(self) -> str:
        calls = "1 agent call" if self.callers == 1 else f"{self.callers} identical agent calls"
        if self.held_here:
            waits = "an agent is waiting for the answer now"
        elif self.told_at is not None:
            waits = "the agent was told to come back for the answer"
        else:
            waits = "no agent is waiting on this broker process"
        return f"{calls}; {waits}"

    def to_json(self) -> dict[str, Any]:
        return {
            "callers": self.callers,
            "held_here": self.held_here,
            "told_at": self.told_at.isoformat() if self.told_at is not None else None,
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class CallContext:
    view: CallView
    tool: ToolFacts
    waiting: Waiting
    recent: tuple[Approval, ...]
    """The last `RECENT_DECISIONS` decided calls of the same agent to the same tool, newest first."""


class CallContexts(Protocol):
    """Context for deciding a call. `view` and `tool` are cheap and synchronous (for lists);
    `context` reads the store for the recent decisions. Raises StoreUnavailable."""

    def view(self, approval: Approval) -> CallView: ...

    def tool(self, server: str, upstream_tool: str) -> ToolFacts: ...

    async def context(self, approval: Approval, *, recent: bool = True) -> CallContext: ...


def recent_decisions(approval: Approval, candidates: Sequence[Approval]) -> tuple[Approval, ...]:
    """The newest decided calls among `candidates`, the approval itself excluded."""
    return tuple(
        other for other in candidates if other.id != approval.id and other.status in RECENT_STATUSES
    )[:RECENT_DECISIONS]
