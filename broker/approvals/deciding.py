"""Deciding a held call: who may decide it, a yes or a no, votes toward a quorum, edits and grants.

The service (broker.approvals.service) owns a `Decider` and hands it the lifecycle moves it
shares: reading an approval afresh, expiring one whose deadline passed, announcing a change and
starting the release of an approved call. The rules applied here are elsewhere, each pure:
broker.approvals.eligibility (who may decide, distinct approvers), broker.approvals.quorum (the
tally), broker.approvals.edits (what an edit may change) and broker.approvals.grant_making.

Exception tree (in addition to `broker.approvals.ports`)::

    ApprovalError
    └── NotAllowedToDecide      the person may not decide this approval (not an approver
                                for its rule, the agent whose call it is or a person it acts
                                for, or a yes from someone who cannot count toward its quorum)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol

from broker.approvals.audit import AuditEvent, AuditEventKind, requested_event
from broker.approvals.clock import Clock
from broker.approvals.edits import Edit, EditListener, EditRefused, EditStore, prepare_edit
from broker.approvals.eligibility import Eligibility, quorum_refusal
from broker.approvals.grant_making import GrantMaker
from broker.approvals.grants import Grant, GrantListener
from broker.approvals.model import Approval, ApprovalStatus, Approver, NewApproval, Vote
from broker.approvals.ports import (
    ApprovalError,
    ApprovalStore,
    ArgumentsChanged,
    InvalidTransition,
    VoteStore,
)
from broker.approvals.quorum import Requirement, tally
from broker.approvals.verdict import Approve, Verdict
from broker.policy import Policy
from broker.policy.decision import Decision
from broker.policy.grants import GrantAllowance

logger = logging.getLogger(__name__)


class NotAllowedToDecide(ApprovalError):
    pass


class VoteListener(Protocol):
    """Hears every vote toward a quorum (metrics). `outcome` is counted, repeat (the person had
    voted already), decisive (it reached the quorum), deny or refused. Called inline: must not block."""

    def vote_cast(self, approval: Approval, approver: str, outcome: str) -> None: ...


class Decider:
    def __init__(
        self,
        store: ApprovalStore,
        *,
        clock: Clock,
        policy: Callable[[], Policy] | None,
        eligibility: Eligibility,
        votes: VoteStore | None,
        edits: EditStore | None,
        tool_schema: Callable[[str, str], Mapping[str, Any] | None] | None,
        fresh: Callable[[str], Awaitable[Approval]],
        expire: Callable[[Approval], Awaitable[tuple[Approval, bool]]],
        announce: Callable[[Approval], None],
        start_release: Callable[[Approval], None],
    ) -> None:
        self.store = store
        self._clock = clock
        self._policy = policy
        self._eligibility = eligibility
        self._votes = votes
        self._edits = edits
        self._tool_schema = tool_schema
        """(server, upstream tool) -> its inputSchema, when known (see broker.approvals.edits)."""
        self._fresh = fresh
        self._expire = expire
        self._announce = announce
        self._start_release = start_release
        self._vote_listeners: list[VoteListener] = []
        self._edit_listeners: list[EditListener] = []
        self._grant_listeners: list[GrantListener] = []

    def add_vote_listener(self, listener: VoteListener) -> None:
        self._vote_listeners.append(listener)

    def add_edit_listener(self, listener: EditListener) -> None:
        self._edit_listeners.append(listener)

    def may_decide(self, approval: Approval, approver: Approver) -> str | None:
        """None when `approver` may decide `approval`, else the reason they may not (see
        broker.approvals.eligibility: the rule that held the call and the rule in force now)."""
        return self._eligibility.refusal(approval, approver, self.decision_now(approval))

    def grant_allowance(self, approval: Approval) -> GrantAllowance | None:
        """What approvers may grant beside approving `approval` now (broker.approvals.grant_making)."""
        return GrantMaker.allowance(approval, self.decision_now(approval))

    def decision_now(self, approval: Approval) -> Decision | None:
        if self._policy is None:
            return None
        return self._policy().decide(
            approval.upstream_tool,
            server=approval.server,
            agent=approval.agent,
            arguments=approval.as_decided(),
        )

    async def open_granted(self, new: NewApproval, grant: Grant) -> Approval:
        """An approval for a call a grant let through that must still be tracked as one (a
        task-augmented call: its task is served from the approval), released like any approved
        call so any replica serves its task. It is created approved by the grant in the same
        transaction: were it pending for a moment, a channel or another replica could prompt a
        human for it, and a crash in between would leave a granted call waiting for one."""
        approved = await self.store.create_decided(
            new,
            to=ApprovalStatus.APPROVED,
            changes={
                "decided_by": f"grant {grant.id}",
                "decided_at": self._clock(),
                "decided_via": "grant",
                "decision_reason": f"let through by {grant.summary()} from approval {grant.approval_id}",
            },
            audit=(
                requested_event(new, grant=grant.id),
                AuditEvent(AuditEventKind.APPROVED, f"grant {grant.id}", {"via": "grant", "grant": grant.id}),
            ),
        )
        self._announce(approved)
        self._start_release(approved)
        return approved

    async def decide(self, approval_id: str, verdict: Verdict, *, approver: Approver, via: str) -> Approval:
        """Approve or deny a pending approval; exactly one of any number of racing deciders wins.

        Under a quorum (see broker.approvals.quorum) a yes is a vote: the approval stays pending,
        showing its progress, until enough distinct approvers agreed; the vote that reaches the
        quorum approves it, exactly once across replicas. A deny always ends the call at once.

        Raises ApprovalNotFound, NotAllowedToDecide, or InvalidTransition whose `current`
        says who ended it and when (also when the deadline passed before the click).
        """
        approval = await self._fresh(approval_id)
        current = self.decision_now(approval)
        approve = isinstance(verdict, Approve)
        refusal = self._eligibility.refusal(approval, approver, current)
        requirement = self._eligibility.requirement(approval, current)
        if refusal is None and approve:
            refusal = quorum_refusal(approver, requirement)
        if refusal is not None:
            if requirement.is_quorum:
                self.tell_vote(approval, approver, "refused")
            raise NotAllowedToDecide(refusal)
        now_refused = current.refusal() if approve and current is not None else None
        if now_refused is not None:
            raise NotAllowedToDecide(f"{now_refused}; it can only be denied")
        target = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
        if approval.is_overdue(self._clock()):
            # The deadline wins over a late click, even if the sweeper has not run yet.
            expired, _ = await self._expire(approval)
            raise InvalidTransition(expired, expected={ApprovalStatus.PENDING}, to=target)
        seen = verdict.seen_hash if isinstance(verdict, Approve) else None
        if seen is not None and seen != approval.arguments_hash:
            raise ArgumentsChanged(approval, seen_hash=seen)
        if isinstance(verdict, Approve) and verdict.grant is not None:
            if verdict.edits:
                raise NotAllowedToDecide(
                    "a grant cannot be given together with edits: approve the edited call first, and "
                    "grant on a later call that matches it"
                )
            grant_refused = GrantMaker.check(approval, verdict.grant, current)
            if grant_refused is not None:
                raise NotAllowedToDecide(grant_refused)
        if isinstance(verdict, Approve) and verdict.edits is not None:
            edit = self._edit(approval, verdict, current)
            if edit.changes:
                return await self._vote(approval, approver, verdict, via, requirement, current, edit)
        if isinstance(verdict, Approve) and (requirement.is_quorum or verdict.grant is not None):
            # A grant is made only inside the deciding vote's transaction, so it goes the voting way.
            return await self._vote(approval, approver, verdict, via, requirement, current)
        now = self._clock()
        reason = verdict.reason
        decided = await self.store.transition(
            approval_id,
            expected={ApprovalStatus.PENDING},
            to=target,
            changes={
                "decided_by": approver.name,
                "decided_at": now,
                "decided_via": via,
                "decision_reason": reason,
            },
            audit=AuditEvent(
                AuditEventKind.APPROVED if approve else AuditEventKind.DENIED,
                approver.name,
                {"via": via, "reason": reason} if reason else {"via": via},
            ),
        )
        if requirement.is_quorum:
            self.tell_vote(decided, approver, "deny")
        self._announce(decided)
        if approve:
            self._start_release(decided)
        return decided

    def _edit(self, approval: Approval, verdict: Approve, current: Decision | None) -> Edit:
        """The checked edit (see broker.approvals.edits); EditRefused says why not."""
        policy = self._policy
        schema = self._tool_schema(approval.server, approval.upstream_tool) if self._tool_schema else None
        try:
            return prepare_edit(
                approval,
                verdict.edits,
                current=current,
                decide=None if policy is None else partial(_decide_for, policy(), approval),
                input_schema=schema,
            )
        except EditRefused:
            self._tell_edit(approval, "refused")
            raise

    async def _vote(
        self,
        approval: Approval,
        approver: Approver,
        verdict: Approve,
        via: str,
        requirement: Requirement,
        current: Decision | None,
        edit: Edit | None = None,
    ) -> Approval:
        reason = verdict.reason
        if self._votes is None or (edit is not None and self._edits is None):
            # Fail closed: without a vote store a quorum could only be faked.
            raise NotAllowedToDecide("this broker cannot record votes toward a quorum or edits")
        counts = self._eligibility.counts(approval, current)
        details: dict[str, Any] = {"via": via, "groups": sorted(approver.groups)}
        if reason:
            details["reason"] = reason
        vote = Vote(approver.name, approver.groups, via, self._clock())
        voted = AuditEvent(AuditEventKind.VOTED, approver.name, details)
        counted = partial(tally, requirement=requirement, counts=counts)
        if edit is not None and self._edits is not None:
            cast = await self._edits.approve_edited(
                approval.id,
                edit,
                vote,
                seen_hash=approval.arguments_hash,
                reason=reason,
                edited=AuditEvent(
                    AuditEventKind.EDITED, approver.name, edit.audit_details(approval, via=via)
                ),
                voted=voted,
                tally=counted,
            )
            self._tell_edit(cast.approval, "applied")
        else:
            cast = await self._votes.cast(
                approval.id,
                vote,
                reason=reason,
                audit=voted,
                tally=counted,
                arguments_hash=approval.arguments_hash,
                grant=verdict.grant,
                make_grant=GrantMaker(current, self._clock).make,
            )
        if requirement.is_quorum:
            self.tell_vote(
                cast.approval, approver, "decisive" if cast.decided else "counted" if cast.new else "repeat"
            )
        if cast.new:
            self._announce(cast.approval)
        if cast.decided:
            if cast.grant is not None:
                self._tell_grant(cast.approval, cast.grant)
            self._start_release(cast.approval)
        return cast.approval

    def _tell_edit(self, approval: Approval, outcome: str) -> None:
        for listener in self._edit_listeners:
            try:
                listener.edit_made(approval, outcome)
            except Exception:
                logger.exception("edit listener %s failed on %s", type(listener).__name__, approval.id)

    def add_grant_listener(self, listener: GrantListener) -> None:
        self._grant_listeners.append(listener)

    def _tell_grant(self, approval: Approval, grant: Grant) -> None:
        for listener in self._grant_listeners:
            try:
                listener.grant_made(approval, grant)
            except Exception:
                logger.exception("grant listener %s failed on %s", type(listener).__name__, grant.id)

    def tell_vote(self, approval: Approval, approver: Approver, outcome: str) -> None:
        for listener in self._vote_listeners:
            try:
                listener.vote_cast(approval, approver.name, outcome)
            except Exception:
                logger.exception("vote listener %s failed on %s", type(listener).__name__, approval.id)


def _decide_for(policy: Policy, approval: Approval, arguments: Mapping[str, Any]) -> Decision:
    """The policy's decision on `approval`'s call with other arguments (an edit)."""
    return policy.decide(
        approval.upstream_tool,
        server=approval.server,
        agent=approval.agent,
        arguments=approval.as_decided(arguments),
    )
