"""What a person answers to a held call: `Approve | Deny`, told apart by type.

The channels (API, CLI, Slack, web inbox) turn a click or a request into a verdict and hand it to
`ApprovalService.decide`; nothing else about the decision travels beside it. A verdict carries the
person's optional reason. An approval may carry `edits`, the top-level arguments the approver
changed (see broker.approvals.edits), and `seen_hash`, the ``arguments_hash`` of the call as the
approver was shown it: a yes then counts only for exactly those arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.approvals.grants import GrantRequest


@dataclass(frozen=True, slots=True)
class Approve:
    reason: str | None = None
    edits: Mapping[str, Any] | None = None
    """Argument name -> new value, for the rule's ``editable`` arguments; None: approved as shown."""
    seen_hash: str | None = None
    """The arguments the approver saw (``Approval.arguments_hash``); None: whatever is stored now."""
    grant: GrantRequest | None = None
    """Also let the agent's next calls like this one through for a while (broker.approvals.grants)."""


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str | None = None


Verdict = Approve | Deny


def verdict_of(approve: bool, reason: str | None = None, *, seen_hash: str | None = None) -> Verdict:
    """The verdict for a channel's yes/no button."""
    return Approve(reason, seen_hash=seen_hash) if approve else Deny(reason)
