"""Which grant an approval's deciding vote makes, checked against the rule when each vote asks.

`GrantMaker.check` says why a request is refused before its vote is recorded (the service raises
NotAllowedToDecide with it): the rule in force must still hold the call by the rule and revision that held it, and
that rule's ``grant`` setting must allow the request (broker.approvals.grants.refusal). `make`
runs inside the deciding vote's transaction (broker.store.votes) and returns the narrowest grant
the counted voters all asked for, or None.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.approvals.clock import Clock
from broker.approvals.grants import Grant, GrantRequest, grant_for, narrowest, refusal
from broker.approvals.model import Approval
from broker.approvals.quorum import Tally
from broker.policy.decision import Action, Decision
from broker.policy.grants import GrantAllowance


def _allowance(approval: Approval, current: Decision | None) -> tuple[GrantAllowance | None, str | None]:
    if current is None:
        return None, "this broker has no policy to bound a grant"
    if (
        current.action is not Action.REQUIRE_APPROVAL
        or current.rule != approval.rule
        or current.revision != approval.policy_revision
    ):
        return None, (
            f"the policy changed since the call was held (now revision {current.revision}, {current.action} "
            f"by {current.rule}): a grant would be void at once; approve without one"
        )
    allowance = current.approval.grant if current.approval is not None else None
    return allowance, None


class GrantMaker:
    def __init__(self, current: Decision | None, clock: Clock) -> None:
        self._current = current
        self._clock = clock

    @staticmethod
    def allowance(approval: Approval, current: Decision | None) -> GrantAllowance | None:
        """What the rule lets approvers grant now, or None (no grant setting, or the policy changed)."""
        allowance, problem = _allowance(approval, current)
        return allowance if problem is None else None

    @staticmethod
    def check(approval: Approval, request: GrantRequest, current: Decision | None) -> str | None:
        allowance, problem = _allowance(approval, current)
        problem = problem or refusal(request, allowance)
        return None if problem is None else f"cannot grant: {problem}"

    def make(
        self, approval: Approval, result: Tally, requests: Mapping[str, GrantRequest | None]
    ) -> Grant | None:
        allowance, problem = _allowance(approval, self._current)
        if allowance is None or problem is not None:
            return None
        chosen = narrowest([requests.get(name) for name in result.counted], allowance)
        if chosen is None or refusal(chosen, allowance) is not None:
            return None
        return grant_for(approval, chosen, result.counted, self._clock())
