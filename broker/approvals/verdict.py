"""What a person answers to a held call: `Approve | Deny`, told apart by type.

The channels (API, CLI, Slack, web inbox) turn a click or a request into a verdict and hand it to
`ApprovalService.decide`; nothing else about the decision travels beside it. A verdict carries the
person's optional reason. Approving with edited arguments will join `Approve` as a field.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.approvals.grants import GrantRequest


@dataclass(frozen=True, slots=True)
class Approve:
    reason: str | None = None
    grant: GrantRequest | None = None
    """Also let the agent's next calls like this one through for a while (broker.approvals.grants)."""


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str | None = None


Verdict = Approve | Deny


def verdict_of(approve: bool, reason: str | None = None) -> Verdict:
    """The verdict for a channel's yes/no button."""
    return Approve(reason) if approve else Deny(reason)
