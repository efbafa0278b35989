"""What the policy says about one call: the single object every layer passes around."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from broker.policy.escalation import EscalationStep
from broker.policy.grants import GrantAllowance
from broker.policy.limits import SpendLimit


class Action(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    HIDE = "hide"
    REQUIRE_APPROVAL = "require_approval"


@dataclass(frozen=True, slots=True)
class RateLimit:
    max_calls: int
    window_seconds: float


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    timeout_seconds: float = 300.0
    on_timeout: str = "deny"
    approvers: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    hold_budget_seconds: float | None = None
    """How long an agent's request is held before it gets the "pending" answer, for this rule's
    calls (None: the agent's or the broker's budget; see broker/proxy/held_calls.py)."""
    quorum: int = 1
    """Distinct approvers whose yes releases the call (four-eyes: 2); see broker/approvals/quorum.py."""
    quorum_from: tuple[str, ...] = ()
    """Groups (``@risk``) that must each be represented by a different one of those approvers."""
    escalation: tuple[EscalationStep, ...] = ()
    """Who is asked next when nobody decided (see broker/policy/escalation.py), in order."""
    editable: tuple[str, ...] = ()
    """Top-level arguments approvers may change before approving; see broker/policy/edits.py."""
    grant: GrantAllowance | None = None
    """What approvers may grant beside their yes (None: nothing); see broker/policy/grants.py."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy verdict.

    `rule` names the rule that produced it in a form an operator can find in the
    policy file (e.g. ``rules[2] 'binance_*'``, ``hide[0] 'x'`` or ``default``);
    `revision` is the content hash of the policy document that was in force.
    """

    action: Action
    rule: str
    reason: str
    revision: str
    rate_limit: RateLimit | None = None
    approval: ApprovalRequirement | None = None
    limits: tuple[SpendLimit, ...] = ()
    """Spend and count limits the gateway reserves against before forwarding (broker/policy/limits.py)."""

    def refusal(self) -> str | None:
        """Why this policy would now refuse a call that was already held, or None if it would not."""
        if self.action is Action.DENY or self.action is Action.HIDE:
            verb = "hides" if self.action is Action.HIDE else "denies"
            return f"the policy in force (revision {self.revision}) now {verb} this call by rule {self.rule}"
        return None

    @property
    def forwards(self) -> bool:
        """True when the call may reach the upstream without a human."""
        return self.action is Action.ALLOW
