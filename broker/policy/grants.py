"""The ``grant`` setting of a require_approval rule: how far approvers may let similar calls through.

::

    grant: {max: 1h, max_calls: 20, scope: [identical, matching], budget: {sum: args.amount, max: 500}}

An approver who approves a call held by this rule may also grant the agent its next calls "like
this one" for a while, so the same question is not asked twenty times an hour (approval fatigue).
The rule bounds what they may grant:

* ``max`` (required): the longest grant, a duration (``30m``, ``1h``, or seconds);
* ``max_calls`` (default 10): the most calls one grant lets through, so a grant is bounded in use as
  well as in time; an approver may ask for fewer, never more;
* ``scope`` (default ``[identical]``): which kinds of grant approvers may choose from.
  ``identical``: the same tool, agent and canonical arguments (their SHA-256);
  ``matching``: the same tool and agent with any arguments for which the policy in force still
  decides this very rule with require_approval (its ``when`` conditions still hold);
* ``budget`` (optional): what all the calls one grant lets through may spend together, a limit
  like those of ``limits`` (broker/policy/limits.py) without window, scope or counter:
  ``{sum: <expression>, max: N}`` or ``{count: true, below: N}``. Every call under the grant
  reserves its share (with the rule's own ``limits``, all or none) under the grant's own counter;
  a call that would take the grant past its budget is held for a human like a call without grant.

A grant is only ever consulted for a call the policy holds by this rule, under the policy revision
it was made under: a deny, a hide, another rule or a changed policy never meets a grant (see
broker/proxy/checks/grants.py). Refused with the position of the value at fault: unknown keys, a
missing or non-positive ``max``, ``max_calls`` not a whole number of at least 1, an unknown or
repeated scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from broker.policy.document import Fail, MappingNode, Node, ScalarNode, SequenceNode, describe_node
from broker.policy.duration import parse_duration
from broker.policy.limits import SpendLimit, limits_json, parse_budget

GRANT_KEYS: Final = ("max", "max_calls", "scope", "budget")
SCOPES: Final = ("identical", "matching")
DEFAULT_MAX_CALLS: Final = 10
_SHAPE: Final = "grant: {max: 1h, max_calls: 20, scope: [identical, matching]}"


@dataclass(frozen=True, slots=True)
class GrantAllowance:
    """What a rule lets approvers grant (the upper bounds of any one grant)."""

    max_seconds: float
    max_calls: int = DEFAULT_MAX_CALLS
    scopes: tuple[str, ...] = ("identical",)
    budget: SpendLimit | None = None
    """What the calls of one grant may spend together (None: no budget)."""


def parse_grant(node: Node, fail: Fail) -> GrantAllowance | None:
    """The allowance; None after reporting every problem through `fail`."""
    if not isinstance(node, MappingNode):
        fail(node, f"grant must be a mapping like {_SHAPE}; got {describe_node(node)}")
        return None
    ok = True
    for key, _ in node:
        if key.name not in GRANT_KEYS:
            fail(key, f"unknown key '{key.name}' in grant (keys: {', '.join(GRANT_KEYS)})")
            ok = False
    max_node = node.get("max")
    seconds: float | None = None
    if max_node is None:
        fail(node, f"grant needs 'max', the longest grant an approver may give: {_SHAPE}")
        ok = False
    else:
        try:
            seconds = parse_duration(max_node.value if isinstance(max_node, ScalarNode) else None)
        except ValueError as exc:
            fail(max_node, f"grant.max {exc}")
            ok = False
    max_calls = DEFAULT_MAX_CALLS
    calls_node = node.get("max_calls")
    if calls_node is not None:
        value = calls_node.value if isinstance(calls_node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(
                calls_node,
                f"grant.max_calls must be a whole number of at least 1, got {describe_node(calls_node)}",
            )
            ok = False
        else:
            max_calls = value
    scopes: tuple[str, ...] = ("identical",)
    scope_node = node.get("scope")
    if scope_node is not None:
        parsed = _scopes(scope_node, fail)
        ok = ok and parsed is not None
        scopes = parsed or scopes
    budget = None
    budget_node = node.get("budget")
    if budget_node is not None:
        budget = parse_budget(budget_node, fail)
        ok = ok and budget is not None
    if not ok or seconds is None:
        return None
    return GrantAllowance(max_seconds=seconds, max_calls=max_calls, scopes=scopes, budget=budget)


def _scopes(node: Node, fail: Fail) -> tuple[str, ...] | None:
    items = [node] if isinstance(node, ScalarNode) else node.items if isinstance(node, SequenceNode) else None
    if not items:
        fail(
            node, f"grant.scope must be a non-empty list of {' and '.join(SCOPES)}, got {describe_node(node)}"
        )
        return None
    scopes: list[str] = []
    for item in items:
        value = item.value if isinstance(item, ScalarNode) else None
        if value not in SCOPES:
            fail(item, f"grant.scope entries must be one of {', '.join(SCOPES)}, got {describe_node(item)}")
            return None
        if value in scopes:
            fail(item, f"grant.scope names {value} twice")
            return None
        scopes.append(str(value))
    return tuple(scopes)


def grant_text(allowance: GrantAllowance) -> str:
    """``grant of up to 1h and 20 calls (identical, matching)``, for explain and diff."""
    text = (
        f"grant of up to {_duration_text(allowance.max_seconds)} and {allowance.max_calls} calls "
        f"({', '.join(allowance.scopes)})"
    )
    if allowance.budget is not None:
        budget = allowance.budget
        what = budget.measure_text() if budget.amount is None else f"sum of {budget.measure_text()}"
        text += f", budget {what} {'<=' if budget.inclusive else '<'} {budget.bound}"
    return text


def grant_json(allowance: GrantAllowance) -> dict[str, object]:
    shown: dict[str, object] = {
        "max": allowance.max_seconds,
        "max_calls": allowance.max_calls,
        "scope": list(allowance.scopes),
    }
    if allowance.budget is not None:
        shown["budget"] = limits_json((allowance.budget,))[0]
    return shown


def _duration_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
