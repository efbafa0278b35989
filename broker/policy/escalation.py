"""The ``escalate`` setting of a require_approval rule: who is asked next when nobody decided.

One step or a list of them::

    escalate: {after: 10m, to: ["@oncall-leads"], channels: ["slack:#escalations"]}
    escalate:
      - {after: 10m, to: ["@oncall-leads", "carol"], channels: ["slack:#escalations"]}
      - {after: 25m, to: ["@cto"], extend: 30m}

``after`` counts from the moment the call was held. Reaching a step adds its ``to`` (names or
``@groups``) to the people who may decide, beside the rule's approvers and those of earlier steps
(they count toward a quorum like any approver), announces the call in its ``channels``, and keeps
the deadline unless ``extend`` moves it later by that much. The broker does the rest
(broker.approvals.escalation).

Refused with the position of the value at fault:

* an unknown key; ``after`` missing or not a positive duration; ``extend`` not a positive duration;
* a step naming neither ``to`` nor ``channels``; entries of either that are not non-empty strings;
* steps not in strictly increasing ``after`` order;
* a step due at or after the deadline in force at that moment (the rule's ``timeout`` plus the
  ``extend`` of the steps before it): the call would have expired before anybody was asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from broker.policy.document import Fail, MappingNode, Node, ScalarNode, SequenceNode, describe_node
from broker.policy.duration import parse_duration

ESCALATION_KEYS: Final = ("after", "to", "channels", "extend")
_SHAPE: Final = 'escalate: {after: 10m, to: ["@oncall-leads"], channels: ["slack:#escalations"]}'


@dataclass(frozen=True, slots=True)
class EscalationStep:
    after_seconds: float
    """Seconds from the call being held to this step."""
    to: tuple[str, ...] = ()
    """Approvers (names or ``@groups``) who may decide from this step on."""
    channels: tuple[str, ...] = ()
    """Where the escalation is announced (``slack:#escalations``)."""
    extend_seconds: float | None = None
    """How much later the deadline moves when this step is reached (None: it stays)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "after": self.after_seconds,
            "to": list(self.to),
            "channels": list(self.channels),
            "extend": self.extend_seconds,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EscalationStep:
        extend = raw.get("extend")
        return cls(
            float(raw["after"]),
            tuple(raw.get("to", ())),
            tuple(raw.get("channels", ())),
            None if extend is None else float(extend),
        )

    def describe(self) -> str:
        parts = [f"after {self.after_seconds:g}s"]
        if self.to:
            parts.append(f"add approvers {', '.join(self.to)}")
        if self.channels:
            parts.append(f"announce in {', '.join(self.channels)}")
        parts.append(
            f"deadline +{self.extend_seconds:g}s" if self.extend_seconds is not None else "deadline kept"
        )
        return "; ".join(parts)


def parse_escalation(node: Node, timeout_seconds: float, fail: Fail) -> tuple[EscalationStep, ...]:
    """The steps, in order; () after reporting a problem through `fail`."""
    items = node.items if isinstance(node, SequenceNode) else (node,)
    if isinstance(node, SequenceNode) and not node.items:
        fail(node, f"escalate must name at least one step: {_SHAPE}")
        return ()
    steps: list[EscalationStep] = []
    deadline = timeout_seconds
    for item in items:
        step = _step(item, fail)
        if step is None:
            return ()
        if steps and step.after_seconds <= steps[-1].after_seconds:
            fail(
                item,
                f"escalation steps must come in order of 'after': {step.after_seconds:g}s comes after "
                f"a step at {steps[-1].after_seconds:g}s",
            )
            return ()
        if step.after_seconds >= deadline:
            fail(
                item,
                f"this escalation step is due after {step.after_seconds:g}s, but the call times out "
                f"after {deadline:g}s (the rule's timeout plus earlier steps' extend): make 'after' "
                "shorter, the timeout longer, or let an earlier step extend the deadline",
            )
            return ()
        deadline += step.extend_seconds or 0.0
        steps.append(step)
    return tuple(steps)


def _step(node: Node, fail: Fail) -> EscalationStep | None:
    if not isinstance(node, MappingNode):
        fail(node, f"an escalation step must be a mapping like {_SHAPE}; got {describe_node(node)}")
        return None
    for key, _ in node:
        if key.name not in ESCALATION_KEYS:
            fail(key, f"unknown key '{key.name}' in escalate (keys: {', '.join(ESCALATION_KEYS)})")
            return None
    after_node = node.get("after")
    if after_node is None:
        fail(node, f"an escalation step needs 'after' (how long after the call was held): {_SHAPE}")
        return None
    after = _duration(after_node, "after", fail)
    extend_node = node.get("extend")
    extend = None if extend_node is None else _duration(extend_node, "extend", fail)
    to = _names(node.get("to"), "to", fail)
    channels = _names(node.get("channels"), "channels", fail)
    if after is None or to is None or channels is None or (extend_node is not None and extend is None):
        return None
    if not to and not channels:
        fail(node, "an escalation step must name approvers ('to') or 'channels' to tell, or both")
        return None
    return EscalationStep(after, to, channels, extend)


def _duration(node: Node, what: str, fail: Fail) -> float | None:
    try:
        return parse_duration(node.value if isinstance(node, ScalarNode) else None)
    except ValueError as error:
        fail(node, f"escalate.{what} {error}")
        return None


def _names(node: Node | None, what: str, fail: Fail) -> tuple[str, ...] | None:
    if node is None:
        return ()
    if not isinstance(node, SequenceNode):
        fail(
            node, f'escalate.{what} must be a list, e.g. {what}: ["@oncall-leads"]; got {describe_node(node)}'
        )
        return None
    names: list[str] = []
    for item in node.items:
        value = item.value if isinstance(item, ScalarNode) else None
        if not isinstance(value, str) or not value.strip():
            fail(item, f"each entry of escalate.{what} must be a non-empty string, got {describe_node(item)}")
            return None
        if value not in names:
            names.append(value)
    return tuple(names)
