"""Time-boxed grants: an approval that also lets the agent's next calls like it through, for a while.

An approver approving a held call may ask for a grant (`GrantRequest`: minutes, scope, calls). The
rule's ``grant`` setting bounds it (broker/policy/grants.py; `refusal` says what exceeds it), and
it takes the rule's full quorum: every yes carries its own request (or none), and the grant is made
in the same transaction as the vote that approves the call (broker.store.votes), from the
`narrowest` of the counted voters' requests. A voter who approved without asking for a grant
agreed to this call only, so then no grant is made.

A grant (`Grant`) belongs to one agent, one upstream tool, the rule that held the call and the
policy revision it was made under. It lets a call through when the policy in force, at that same
revision, decides that call by that same rule with require_approval, and either its scope is
``matching`` or the call's canonical arguments hash equals the approved call's (``identical``).
Using it is a compare-and-increment in the store (broker.store.grants): at most `max_calls` calls
pass, across any number of replicas, before `expires_at` and until someone revokes it. A reload
that changes the policy voids every grant made under the old revision (they simply stop matching).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from broker.approvals.model import Approval
from broker.policy.grants import GrantAllowance


class GrantScope(enum.StrEnum):
    IDENTICAL = "identical"
    MATCHING = "matching"


_WIDTH = {GrantScope.IDENTICAL: 0, GrantScope.MATCHING: 1}


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """What one approver asks to grant beside their yes. `max_calls` None: the rule's bound."""

    seconds: float
    scope: GrantScope = GrantScope.IDENTICAL
    max_calls: int | None = None

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"a grant must last longer than zero seconds, got {self.seconds!r}")
        if self.max_calls is not None and self.max_calls < 1:
            raise ValueError(f"a grant must allow at least one call, got {self.max_calls!r}")

    def to_json(self) -> dict[str, object]:
        return {"seconds": self.seconds, "scope": self.scope.value, "max_calls": self.max_calls}

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> GrantRequest:
        seconds, calls = raw["seconds"], raw.get("max_calls")
        assert isinstance(seconds, int | float) and (calls is None or isinstance(calls, int))
        return cls(float(seconds), GrantScope(str(raw["scope"])), calls)


def refusal(request: GrantRequest, allowance: GrantAllowance | None) -> str | None:
    """Why the rule does not let approvers give this grant, or None when it does."""
    if allowance is None:
        return "the rule that held this call allows no grants (add 'grant: {max: 1h}' to it)"
    if request.seconds > allowance.max_seconds:
        return (
            f"the grant asks for {request.seconds / 60:g} minutes, and the rule allows at most "
            f"{allowance.max_seconds / 60:g}"
        )
    if request.max_calls is not None and request.max_calls > allowance.max_calls:
        return (
            f"the grant asks for {request.max_calls} calls, and the rule allows at most {allowance.max_calls}"
        )
    if request.scope.value not in allowance.scopes:
        return f"the rule allows only {' or '.join(allowance.scopes)} grants, not {request.scope.value}"
    return None


def narrowest(requests: list[GrantRequest | None], allowance: GrantAllowance) -> GrantRequest | None:
    """The grant every counted voter agreed to: the shortest time, the fewest calls, identical over
    matching; None as soon as one of them asked for none."""
    if not requests or any(request is None for request in requests):
        return None
    chosen = [request for request in requests if request is not None]
    return GrantRequest(
        seconds=min(request.seconds for request in chosen),
        scope=min((request.scope for request in chosen), key=_WIDTH.__getitem__),
        max_calls=min(request.max_calls or allowance.max_calls for request in chosen),
    )


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    approval_id: str
    agent: str
    server: str
    tool: str
    """The upstream tool's own name (as the policy sees it)."""
    rule: str
    policy_revision: str
    scope: GrantScope
    arguments_hash: str
    """The approved call's; binding only for identical grants."""
    created_by: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    max_calls: int
    used_calls: int = 0
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def state(self, now: datetime) -> str:
        """active, used up, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.used_calls >= self.max_calls:
            return "used up"
        return "active"

    def summary(self) -> str:
        """``grant for 30 min (10 calls, matching)``: what Slack, the inbox and the CLI say."""
        minutes = (self.expires_at - self.created_at).total_seconds() / 60
        calls = "1 call" if self.max_calls == 1 else f"{self.max_calls} calls"
        return f"grant for {minutes:g} min ({calls}, {self.scope.value})"


def grant_for(approval: Approval, request: GrantRequest, created_by: tuple[str, ...], at: datetime) -> Grant:
    """The grant an approval's deciding vote makes (its id derives from the approval's: one each)."""
    assert request.max_calls is not None, "narrowest() fills in the rule's bound"
    return Grant(
        id=f"g-{approval.id}",
        approval_id=approval.id,
        agent=approval.agent,
        server=approval.server,
        tool=approval.upstream_tool,
        rule=approval.rule,
        policy_revision=approval.policy_revision,
        scope=request.scope,
        arguments_hash=approval.arguments_hash,
        created_by=created_by,
        created_at=at,
        expires_at=at + timedelta(seconds=request.seconds),
        max_calls=request.max_calls,
    )


class GrantListener(Protocol):
    """Hears grants made (by the deciding vote, on the replica that cast it) and revoked (on the
    replica that revoked it), so counters sum across replicas. Called inline: must not block."""

    def grant_made(self, approval: Approval, grant: Grant) -> None: ...

    def grant_revoked(self, grant: Grant) -> None: ...
