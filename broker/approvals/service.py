"""The approval service: the only code that moves a held call through its states.

The proxy parks calls here and waits on them; the channels (Slack, the web inbox, the HTTP
API, the CLI) decide through `decide`; the sweeper expires what nobody answered. Every move
is a compare-and-set in the store, so any number of services on one database (replicas)
agree on one outcome, and a release is claimed by exactly one of them before the call is
forwarded: the upstream receives an approved call at most once.

Exception tree (in addition to `broker.approvals.ports`)::

    ApprovalError
    └── NotAllowedToDecide      the person may not decide this approval (not an approver
                                for its rule, the agent whose call it is or a person it acts
                                for, or a yes from someone who cannot count toward its quorum)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.clock import Clock, utc_now
from broker.approvals.edits import Edit, EditListener, EditRefused, EditStore, prepare_edit
from broker.approvals.eligibility import ANY_APPROVER, Eligibility, quorum_refusal
from broker.approvals.escalation import Escalated, EscalationListener, escalate_due
from broker.approvals.grant_making import GrantMaker
from broker.approvals.grants import Grant, GrantListener
from broker.approvals.health import StoreHealth
from broker.approvals.model import Approval, ApprovalStatus, Approver, NewApproval, Vote
from broker.approvals.outcomes import unknown_result
from broker.approvals.ports import (
    ApprovalError,
    ApprovalNotFound,
    ApprovalStore,
    ArgumentsChanged,
    EscalationStore,
    InvalidTransition,
    StoreUnavailable,
    VoteStore,
)
from broker.approvals.quorum import Requirement, tally
from broker.approvals.sweeper import RELEASES_IN_FLIGHT, oldest_first
from broker.approvals.verdict import Approve, Verdict
from broker.policy import Policy
from broker.policy.decision import Decision
from broker.policy.grants import GrantAllowance

logger = logging.getLogger(__name__)

TIMEOUT_ACTOR = "timeout"
POLICY_ACTOR = "policy"


class NotAllowedToDecide(ApprovalError):
    pass


class VoteListener(Protocol):
    """Hears every vote toward a quorum (metrics). `outcome` is counted, repeat (the person had
    voted already), decisive (it reached the quorum), deny or refused. Called inline: must not block."""

    def vote_cast(self, approval: Approval, approver: str, outcome: str) -> None: ...


class ApprovalListener(Protocol):
    """A channel that shows approvals to people (Slack, the web inbox)."""

    async def approval_opened(self, approval: Approval) -> None: ...

    async def approval_updated(self, approval: Approval) -> None: ...


class ReleaseFailed(Exception):
    """The approved call was not delivered to the upstream (so it did not run there)."""


class ReleaseOutcomeUnknown(Exception):
    """The approved call was sent, and no answer came back (the connection dropped, the upstream
    process died): it may have run. The approval ends ``outcome_unknown``; it is never re-sent."""


class CallReleaser(Protocol):
    def can_release(self, approval: Approval) -> bool:
        """False while the call cannot be forwarded yet (its upstream is not connected): the
        approval then stays approved, unclaimed, and a later sweep tries again."""
        ...

    async def release(self, approval: Approval) -> dict[str, Any]:
        """Forwards the approved call exactly as stored; returns the upstream's CallToolResult.

        Raises ReleaseFailed when the call was not delivered (upstream down, policy now forbids
        it), ReleaseOutcomeUnknown when it was sent and no answer came back; a tool that ran and
        reported an error is a normal result.
        """
        ...


@dataclass(slots=True)
class _Watch:
    """Wakes waiters on one approval; re-armed after every change."""

    event: anyio.Event = field(default_factory=anyio.Event)
    latest: Approval | None = None
    """The row a change in this process left, handed to the waiters it wakes so they need not read
    it again; None after news from elsewhere, which they must read from the store."""
    waiters: int = 0


class ApprovalService:
    def __init__(
        self,
        store: ApprovalStore,
        *,
        replica: str,
        clock: Clock = utc_now,
        default_approvers: Sequence[str] = (ANY_APPROVER,),
        sweep_interval: float = 1.0,
        stale_release_after: timedelta = timedelta(minutes=15),
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        policy: Callable[[], Policy] | None = None,
        principals: Mapping[str, frozenset[str]] | None = None,
        health: StoreHealth | None = None,
        votes: VoteStore | None = None,
        escalations: EscalationStore | None = None,
        edits: EditStore | None = None,
        tool_schema: Callable[[str, str], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.store = store
        self.replica = replica
        self._clock = clock
        self._default_approvers = tuple(default_approvers)
        self._sweep_interval = sweep_interval
        self._stale_release_after = stale_release_after
        # A release still running when another replica would call it stale must end first.
        self._release_timeout = max(stale_release_after.total_seconds() * 0.8, 0.01)
        self._sleep = sleep
        self._policy = policy
        self._principals = principals or {}
        self._eligibility = Eligibility(self._default_approvers, self._principals)
        self._votes = votes
        self._vote_listeners: list[VoteListener] = []
        self._escalations = escalations
        self._escalation_listeners: list[EscalationListener] = []
        self._edits = edits
        self._tool_schema = tool_schema
        """(server, upstream tool) -> its inputSchema, when known (see broker.approvals.edits)."""
        self._edit_listeners: list[EditListener] = []
        self._grant_listeners: list[GrantListener] = []
        self._releaser: CallReleaser | None = None
        self._listeners: list[ApprovalListener] = []
        self._mirrors: list[ApprovalListener] = []
        self._watches: dict[str, _Watch] = {}
        self._changes_seen: int | None = None
        self._releasing: set[str] = set()
        self._tasks: TaskGroup | None = None
        self.health = health if health is not None else StoreHealth(store.probe, up_interval=sweep_interval)
        """Whether the store may be relied on; the proxy forwards nothing while it is down (fail closed)."""
        self._drain_deadline = math.inf
        self._releases_idle = anyio.Event()
        self._releases_idle.set()

    # -- wiring ------------------------------------------------------------------------------

    def set_releaser(self, releaser: CallReleaser) -> None:
        self._releaser = releaser

    def add_listener(self, listener: ApprovalListener, *, hears_other_replicas: bool = False) -> None:
        """`listener` hears every change this service makes. With `hears_other_replicas` it also
        hears those other replicas announce (for views such as the web inbox); channels that act
        on a change (posting to Slack, counting decisions) must not, or they would act twice."""
        self._listeners.append(listener)
        if hears_other_replicas:
            self._mirrors.append(listener)

    def add_vote_listener(self, listener: VoteListener) -> None:
        self._vote_listeners.append(listener)

    def add_escalation_listener(self, listener: EscalationListener) -> None:
        """`listener` hears each escalation step this replica took (see broker.approvals.escalation)."""
        self._escalation_listeners.append(listener)

    def add_edit_listener(self, listener: EditListener) -> None:
        self._edit_listeners.append(listener)

    @asynccontextmanager
    async def running(self, *, sweep: bool = True) -> AsyncIterator[ApprovalService]:
        """Background work: releases, listener calls and (unless disabled) the sweeper loop."""
        with contextlib.suppress(StoreUnavailable):
            # Before any agent waits, so the first sweep's re-check misses no change.
            self._changes_seen, _ = await self.store.changes_since(None)
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            if sweep:
                tasks.start_soon(self._sweep_forever)
            tasks.start_soon(self.health.run)
            try:
                yield self
            finally:
                tasks.cancel_scope.cancel()
                self._tasks = None

    # -- parking ------------------------------------------------------------------------------

    async def open(self, new: NewApproval, *, alongside: bool = False) -> tuple[Approval, bool]:
        """The approval for this call: an open one for the same call, or a new pending one
        (always a new one `alongside` the open one, when the caller knows the call is a new intent).

        A repeated identical call (same agent, tool, canonical arguments) attaches instead of
        asking the humans twice, also when identical calls arrive together on several replicas.
        A still-pending approval asked under another policy revision is cancelled as superseded
        and the call asked again under the rule now in force: left open, it could be approved
        too and reach the upstream a second time with nobody waiting for its result.
        Returns (approval, created).
        """
        requested = AuditEvent(
            AuditEventKind.REQUESTED,
            new.agent,
            {
                "tool": new.tool,
                "server": new.server,
                "arguments_sha256": new.arguments_hash,
                "rule": new.rule,
                "policy_revision": new.policy_revision,
            },
        )
        if alongside:
            # Another caller still waits on the identical call: this one is a new intent of its own.
            approval = await self.store.create(new, audit=requested)
            self._announce(approval, opened=True)
            return approval, True
        while True:
            approval, created = await self.store.find_or_create(new, audit=requested)
            if created:
                self._announce(approval, opened=True)
                return approval, True
            if approval.is_overdue(self._clock()):
                expired, _ = await self._expire(approval)
                return expired, False
            if (
                approval.status is not ApprovalStatus.PENDING
                or approval.policy_revision == new.policy_revision
            ):
                return approval, False
            try:
                await self._withdraw(
                    approval.id,
                    actor=POLICY_ACTOR,
                    via=POLICY_ACTOR,
                    reason=f"superseded: the policy changed (revision {new.policy_revision}) and the call was asked again",
                )
            except InvalidTransition as lost:
                if lost.current.status is not ApprovalStatus.CANCELLED:
                    return lost.current, False  # decided meanwhile: that outcome stands
            # Cancelled (by us or a racing identical call): the next round creates or attaches.

    async def open_granted(self, new: NewApproval, grant: Grant) -> Approval:
        """An approval for a call a grant let through that must still be tracked as one (a
        task-augmented call: its task is served from the approval): created and approved by the
        grant at once, then released like any approved call, so any replica serves its task."""
        opened = await self.store.create(
            new,
            audit=AuditEvent(
                AuditEventKind.REQUESTED,
                new.agent,
                {
                    "tool": new.tool,
                    "server": new.server,
                    "arguments_sha256": new.arguments_hash,
                    "rule": new.rule,
                    "policy_revision": new.policy_revision,
                    "grant": grant.id,
                },
            ),
        )
        approved = await self.store.transition(
            opened.id,
            expected={ApprovalStatus.PENDING},
            to=ApprovalStatus.APPROVED,
            changes={
                "decided_by": f"grant {grant.id}",
                "decided_at": self._clock(),
                "decided_via": "grant",
                "decision_reason": f"let through by {grant.summary()} from approval {grant.approval_id}",
            },
            audit=AuditEvent(
                AuditEventKind.APPROVED, f"grant {grant.id}", {"via": "grant", "grant": grant.id}
            ),
        )
        self._announce(approved)
        self._start_release(approved)
        return approved

    async def wait(self, approval_id: str, timeout: float) -> Approval:
        """The approval once it has an outcome for the agent, or as it stands after `timeout` seconds."""
        watch = self._watches.setdefault(approval_id, _Watch())
        watch.waiters += 1
        deadline = time.monotonic() + timeout
        known: Approval | None = None
        try:
            while True:
                # A draining process answers its waiters by the drain deadline (see `drain`).
                until = min(deadline, self._drain_deadline)
                # Taken before the read: a change announced while the read is in flight sets this
                # event, so a stale row can never put the waiter to sleep on a later one.
                event = watch.event
                approval = known if known is not None else await self._fresh(approval_id)
                known = None
                if approval.is_terminal:
                    return approval
                if approval.is_overdue(self._clock()):
                    approval, _ = await self._expire(approval)
                    if approval.is_terminal:
                        return approval
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return approval
                with anyio.move_on_after(min(remaining, self._seconds_until(approval))):
                    await event.wait()
                if event.is_set():
                    known = watch.latest
        finally:
            watch.waiters -= 1
            if watch.waiters == 0 and self._watches.get(approval_id) is watch:
                del self._watches[approval_id]

    def _seconds_until(self, approval: Approval) -> float:
        if approval.status is not ApprovalStatus.PENDING:
            return math.inf
        return max((approval.expires_at - self._clock()).total_seconds(), 0.0) + 0.001

    async def _fresh(self, approval_id: str) -> Approval:
        approval = await self.store.get(approval_id)
        if approval is None:
            raise ApprovalNotFound(approval_id)
        return approval

    async def mark_delivered(self, approval: Approval, *, actor: str) -> bool:
        """Records that the agent got the outcome; a later identical call then starts a new approval."""
        return await self.store.mark_delivered(
            approval.id,
            self._clock(),
            audit=AuditEvent(AuditEventKind.DELIVERED, actor, {"status": approval.status.value}),
        )

    async def attach(self, approval: Approval, *, agent: str, session: str) -> tuple[Approval, bool]:
        """Counts a caller from another session that attached to `approval` (once per session) while
        nobody had been told to come back for it, so the approver sees how many callers the decision
        answers. Returns the approval and whether this caller shares an execution it may not have
        asked for (then it must be told so). An agent that was told its call is pending and comes
        back, from any session, is the same caller."""
        if session == approval.session_id or approval.pending_told_at is not None:
            return approval, False
        trail = await self.store.audit_trail(approval.id)
        sessions = {
            record.details.get("session") for record in trail if record.event == AuditEventKind.ATTACHED
        }
        if session in sessions:
            return approval, True
        updated = await self.store.update_fields(
            approval.id,
            {"callers": len(sessions) + 2},
            audit=AuditEvent(AuditEventKind.ATTACHED, agent, {"session": session}),
        )
        self._announce(updated)
        return updated, True

    async def mark_pending_told(self, approval: Approval, *, actor: str) -> Approval:
        """An agent was handed the "pending" answer: from now on only an explicit cancellation
        withdraws the call (see `cancel`). Recorded once."""
        if approval.pending_told_at is not None:
            return approval
        return await self.store.update_fields(
            approval.id,
            {"pending_told_at": self._clock()},
            audit=AuditEvent(AuditEventKind.PENDING_TOLD, actor, {}),
        )

    async def cancel(self, approval_id: str, *, actor: str, reason: str) -> Approval:
        """The agent withdrew the call before anybody decided; raises InvalidTransition once decided."""
        return await self._withdraw(approval_id, actor=actor, via="agent", reason=reason)

    async def _withdraw(self, approval_id: str, *, actor: str, via: str, reason: str) -> Approval:
        approval = await self.store.transition(
            approval_id,
            expected={ApprovalStatus.PENDING},
            to=ApprovalStatus.CANCELLED,
            changes={
                "decided_by": actor,
                "decided_at": self._clock(),
                "decided_via": via,
                "decision_reason": reason,
            },
            audit=AuditEvent(AuditEventKind.CANCELLED, actor, {"reason": reason}),
        )
        self._announce(approval)
        return approval

    # -- deciding -------------------------------------------------------------------------------

    def may_decide(self, approval: Approval, approver: Approver) -> str | None:
        """None when `approver` may decide `approval`, else the reason they may not (see
        broker.approvals.eligibility: the rule that held the call and the rule in force now)."""
        return self._eligibility.refusal(approval, approver, self._decision_now(approval))

    def grant_allowance(self, approval: Approval) -> GrantAllowance | None:
        """What approvers may grant beside approving `approval` now (broker.approvals.grant_making)."""
        return GrantMaker.allowance(approval, self._decision_now(approval))

    def _decision_now(self, approval: Approval) -> Decision | None:
        if self._policy is None:
            return None
        return self._policy().decide(
            approval.upstream_tool, server=approval.server, agent=approval.agent, arguments=approval.arguments
        )

    async def decide(self, approval_id: str, verdict: Verdict, *, approver: Approver, via: str) -> Approval:
        """Approve or deny a pending approval; exactly one of any number of racing deciders wins.

        Under a quorum (see broker.approvals.quorum) a yes is a vote: the approval stays pending,
        showing its progress, until enough distinct approvers agreed; the vote that reaches the
        quorum approves it, exactly once across replicas. A deny always ends the call at once.

        Raises ApprovalNotFound, NotAllowedToDecide, or InvalidTransition whose `current`
        says who ended it and when (also when the deadline passed before the click).
        """
        approval = await self._fresh(approval_id)
        current = self._decision_now(approval)
        approve = isinstance(verdict, Approve)
        refusal = self._eligibility.refusal(approval, approver, current)
        requirement = self._eligibility.requirement(approval, current)
        if refusal is None and approve:
            refusal = quorum_refusal(approver, requirement)
        if refusal is not None:
            if requirement.is_quorum:
                self._tell_vote(approval, approver, "refused")
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
            self._tell_vote(decided, approver, "deny")
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
            self._tell_vote(
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

    def _tell_vote(self, approval: Approval, approver: Approver, outcome: str) -> None:
        for listener in self._vote_listeners:
            try:
                listener.vote_cast(approval, approver.name, outcome)
            except Exception:
                logger.exception("vote listener %s failed on %s", type(listener).__name__, approval.id)

    # -- releasing --------------------------------------------------------------------------------

    def _start_release(self, approval: Approval) -> None:
        if approval.id in self._releasing:
            return
        if self.draining:
            # A stopping replica claims nothing new: the approval stays approved in the store and
            # another replica's sweep (or this one's after a restart) releases it.
            return
        if self._releaser is not None and not self._releaser.can_release(approval):
            # E.g. just after a restart, before the upstream has connected: claiming now would
            # fail the call for good, while a later sweep can still forward it.
            return
        if self._tasks is None:
            raise RuntimeError("ApprovalService.running() must be entered before approvals can be released")
        self._begin_release(approval.id)
        self._tasks.start_soon(self._release, approval)

    def _begin_release(self, approval_id: str) -> None:
        self._releasing.add(approval_id)
        if self._releases_idle.is_set():
            self._releases_idle = anyio.Event()

    def _end_release(self, approval_id: str) -> None:
        self._releasing.discard(approval_id)
        if not self._releasing:
            self._releases_idle.set()

    async def _release(self, approval: Approval, *, claimed: bool = False) -> None:
        try:
            if claimed:
                await self._forward_claimed(approval)
            else:
                await self.release_now(approval)
        except Exception:
            logger.exception("releasing approval %s failed", approval.id)
        finally:
            self._end_release(approval.id)

    async def release_now(self, approval: Approval) -> Approval | None:
        """Claims and forwards an approved call; None when another service claimed it first."""
        if self._releaser is None:
            raise RuntimeError("no releaser is attached to the approval service")
        claimed = await self._claim(approval)
        if claimed is None:
            return None
        return await self._forward_claimed(claimed)

    async def _claim(self, approval: Approval) -> Approval | None:
        try:
            claimed = await self.store.transition(
                approval.id,
                expected={ApprovalStatus.APPROVED},
                to=ApprovalStatus.RELEASED,
                changes={"released_at": self._clock(), "released_by": self.replica},
                audit=AuditEvent(AuditEventKind.RELEASED, self.replica, {}),
            )
        except InvalidTransition:
            return None
        self._announce(claimed)
        return claimed

    async def _forward_claimed(self, claimed: Approval) -> Approval:
        assert self._releaser is not None
        try:
            with anyio.fail_after(self._release_timeout):
                result = await self._releaser.release(claimed)
        except TimeoutError:
            outcome = ApprovalStatus.OUTCOME_UNKNOWN
            result = unknown_result(f"no answer within {self._release_timeout:g} s")
            details: dict[str, Any] = {"error": "release timed out"}
        except ReleaseOutcomeUnknown as exc:
            outcome, result = ApprovalStatus.OUTCOME_UNKNOWN, unknown_result(str(exc))
            details = {"error": str(exc)}
        except ReleaseFailed as exc:
            outcome, result = ApprovalStatus.FAILED, _failure_result(str(exc))
            details = {"error": str(exc)}
        except Exception as exc:
            # Anything unexpected still ends the approval: an agent must never wait on a call
            # that nobody is forwarding any more.
            logger.exception("release of %s raised", claimed.id)
            outcome, result = (
                ApprovalStatus.FAILED,
                _failure_result(f"internal error while forwarding: {exc}"),
            )
            details = {"error": type(exc).__name__}
        else:
            outcome = ApprovalStatus.COMPLETED
            details = {"is_error": bool(result.get("isError"))}
        finished = await self.store.transition(
            claimed.id,
            expected={ApprovalStatus.RELEASED},
            to=outcome,
            changes={"completed_at": self._clock(), "result": result},
            audit=AuditEvent(AuditEventKind.for_status(outcome), self.replica, details),
        )
        self._announce(finished)
        return finished

    # -- sweeping ------------------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                # Only probes bring the store back: a sweep can succeed on a SQLite file that moved.
                self.health.failed(str(exc))
            except Exception:
                logger.exception("approval sweep failed (will retry)")
            await self._sleep(self._sweep_interval)

    @property
    def store_available(self) -> bool:
        """False from the first store failure seen until a later probe succeeded (see `health`)."""
        return self.health.up

    async def wait_for_store(self, *, available: bool) -> None:
        """Returns once the store is considered reachable (or unreachable)."""
        await self.health.wait(up=available)

    async def sweep(self) -> int:
        """One pass: expire what is due, escalate what waited long enough, release approved calls nobody is releasing (all of them,
        oldest first, see `_release_approved`), end releases whose replica died, notice outside
        changes to approvals someone here waits on. Returns how many approvals it expired."""
        now = self._clock()
        expired = 0
        while True:
            due = await self.store.due_for_expiry(now, limit=100)
            for approval in due:
                _, won = await self._expire(approval)
                expired += won
            if len(due) < 100:
                break
        if self._escalations is not None:
            for escalated in await escalate_due(self._escalations, now, replica=self.replica):
                self._announce(escalated.approval)
                self._announce_escalation(escalated)
        await self._release_approved(now)
        await self._fail_stale_releases(now)
        await self._recheck_watched()
        return expired

    async def _release_approved(self, now: datetime) -> None:
        """Every approved call nobody here is releasing, oldest first, however many: claims are
        made one after another in that order and each forward starts as soon as its claim is won,
        so an upstream coming back receives its backlog in the order the calls were made. At most
        `RELEASES_IN_FLIGHT` releases run at once; the rest wait for the next pass."""
        if self._releaser is None:
            return
        async for approval in oldest_first(self.store, {ApprovalStatus.APPROVED}):
            if approval.id in self._releasing:
                continue
            if not self._releaser.can_release(approval):
                await self._fail_unreleasable(now, approval)
                continue
            if self.draining or self._tasks is None or len(self._releasing) >= RELEASES_IN_FLIGHT:
                continue  # still read on, for calls whose upstream stayed away too long
            self._begin_release(approval.id)
            try:
                claimed = await self._claim(approval)
            except BaseException:
                self._end_release(approval.id)
                raise
            if claimed is None:
                self._end_release(approval.id)
            else:
                self._tasks.start_soon(partial(self._release, claimed, claimed=True))

    async def _expire(self, approval: Approval) -> tuple[Approval, bool]:
        """Expires a pending approval: the row as it now stands, and whether this call expired it
        (False when a decision or another replica's sweep got there first)."""
        try:
            expired = await self.store.transition(
                approval.id,
                expected={ApprovalStatus.PENDING},
                to=ApprovalStatus.EXPIRED,
                changes={
                    "decided_by": TIMEOUT_ACTOR,
                    "decided_at": self._clock(),
                    "decided_via": TIMEOUT_ACTOR,
                    "decision_reason": "nobody decided before the deadline; auto-denied",
                },
                audit=AuditEvent(
                    AuditEventKind.EXPIRED, TIMEOUT_ACTOR, {"expires_at": approval.expires_at.isoformat()}
                ),
            )
        except InvalidTransition as lost:
            return lost.current, False
        self._announce(expired)
        return expired, True

    async def _fail_unreleasable(self, now: datetime, approval: Approval) -> None:
        """An approved call whose upstream stayed unreachable for as long as a release may take
        is failed rather than forwarded long after the human decided."""
        decided_at = approval.decided_at or approval.created_at
        if self.draining or now - decided_at < self._stale_release_after:
            return
        try:
            claimed = await self.store.transition(
                approval.id,
                expected={ApprovalStatus.APPROVED},
                to=ApprovalStatus.RELEASED,
                changes={"released_at": now, "released_by": self.replica},
                audit=AuditEvent(AuditEventKind.RELEASED, self.replica, {"forwarded": False}),
            )
        except InvalidTransition:
            return
        message = (
            f"upstream '{approval.server}' stayed unreachable for "
            f"{self._stale_release_after.total_seconds():g} s after the approval; the call was not forwarded"
        )
        failed = await self.store.transition(
            claimed.id,
            expected={ApprovalStatus.RELEASED},
            to=ApprovalStatus.FAILED,
            changes={"completed_at": now, "result": _failure_result(message)},
            audit=AuditEvent(AuditEventKind.FAILED, self.replica, {"error": "upstream unreachable"}),
        )
        self._announce(failed)

    async def _fail_stale_releases(self, now: datetime) -> None:
        """A call claimed for release by a process that died may or may not have reached the
        upstream: it ends outcome_unknown, never re-sent. Reads every released call, oldest first."""
        async for approval in oldest_first(self.store, {ApprovalStatus.RELEASED}):
            if approval.id in self._releasing or approval.released_at is None:
                continue
            if now - approval.released_at < self._stale_release_after:
                continue
            reason = (
                f"the broker replica {approval.released_by} that sent it stopped before the upstream answered"
            )
            try:
                unknown = await self.store.transition(
                    approval.id,
                    expected={ApprovalStatus.RELEASED},
                    to=ApprovalStatus.OUTCOME_UNKNOWN,
                    changes={"completed_at": now, "result": unknown_result(reason)},
                    audit=AuditEvent(
                        AuditEventKind.OUTCOME_UNKNOWN,
                        self.replica,
                        {"error": "the forwarding replica stopped", "replica": approval.released_by},
                    ),
                )
            except InvalidTransition:
                continue
            self._announce(unknown)

    async def _recheck_watched(self) -> None:
        """Wakes local waiters whose approval another process changed: the safety net under the
        replica notifications. It reads what changed since the last pass, not every watched
        approval, so ten thousand waiting agents cost no more than one."""
        seq, changed = await self.store.changes_since(self._changes_seen)
        if self._changes_seen is not None:
            for approval_id in changed:
                if approval_id in self._watches:
                    self._wake(approval_id)
        self._changes_seen = seq

    # -- notifications ----------------------------------------------------------------------------------

    def notice_external_change(self, approval_id: str, *, status: ApprovalStatus | None = None) -> None:
        """Another process changed an approval (e.g. a PostgreSQL notification): wake its waiters.

        When the news is that it was approved and an agent waits on it here, this replica also
        tries to release it at once. The deciding replica tries too; the store's compare-and-set
        lets exactly one of them forward the call, so this only shortens the way to the agent.
        """
        self._wake(approval_id)
        if self._mirrors and self._tasks is not None:
            self._tasks.start_soon(self._mirror, approval_id)
        if (
            status is ApprovalStatus.APPROVED
            and approval_id in self._watches
            and approval_id not in self._releasing
            and self._tasks is not None
            and not self.draining
        ):
            self._tasks.start_soon(self._release_if_approved, approval_id)

    def notice_external_changes(self) -> None:
        """News of other processes' changes may have been missed (a lost notification connection):
        every local waiter re-reads its approval."""
        for approval_id in list(self._watches):
            self._wake(approval_id)

    async def _mirror(self, approval_id: str) -> None:
        try:
            approval = await self.store.get(approval_id)
        except StoreUnavailable:
            return  # views resync when they reconnect
        if approval is None:
            return
        # Other replicas announce a pending approval only when they create it.
        opened = approval.status is ApprovalStatus.PENDING
        for listener in self._mirrors:
            await self._tell(listener, approval, opened)

    async def _release_if_approved(self, approval_id: str) -> None:
        try:
            approval = await self.store.get(approval_id)
        except StoreUnavailable:
            return  # the sweeper retries once the store is back
        if approval is not None and approval.status is ApprovalStatus.APPROVED:
            self._start_release(approval)

    # -- counts and graceful drain ------------------------------------------------------------------

    @property
    def held_calls(self) -> int:
        """Agent requests waiting in `wait` in this process right now."""
        return sum(watch.waiters for watch in self._watches.values())

    def held_here(self, approval_id: str) -> int:
        """Agent requests waiting in `wait` for this approval in this process right now."""
        watch = self._watches.get(approval_id)
        return watch.waiters if watch is not None else 0

    @property
    def draining(self) -> bool:
        return self._drain_deadline != math.inf

    @property
    def drain_deadline(self) -> float:
        """`time.monotonic()` by which every waiter has been answered; infinite unless draining."""
        return self._drain_deadline

    def drain(self, grace: float) -> None:
        """The process is stopping: `wait` returns by `grace` seconds from now with the approval as it
        stands, and no new release is claimed here. Nothing is lost: the approvals stay in the store,
        and the agents come back for them here after a restart or on another replica."""
        if grace < 0:
            raise ValueError(f"grace must not be negative, got {grace}")
        self._drain_deadline = min(self._drain_deadline, time.monotonic() + grace)
        # Sleeping waiters pick up the new deadline.
        self.notice_external_changes()

    async def finish_releases(self) -> None:
        """Returns once no release started by this process is still forwarding its call."""
        while self._releasing:
            await self._releases_idle.wait()

    def _wake(self, approval_id: str, changed: Approval | None = None) -> None:
        watch = self._watches.get(approval_id)
        if watch is not None:
            if changed is None:
                watch.latest = None
            elif watch.latest is None or changed.version > watch.latest.version:
                # Announcements of one process's changes may run out of commit order: keep the newest.
                watch.latest = changed
            watch.event.set()
            watch.event = anyio.Event()

    def _announce(self, approval: Approval, *, opened: bool = False) -> None:
        self._wake(approval.id, approval)
        if self._tasks is None:
            return
        for listener in self._listeners:
            self._tasks.start_soon(self._tell, listener, approval, opened)

    def _announce_escalation(self, escalated: Escalated) -> None:
        if self._tasks is None:
            return
        for listener in self._escalation_listeners:
            self._tasks.start_soon(self._tell_escalation, listener, escalated)

    @staticmethod
    async def _tell_escalation(listener: EscalationListener, escalated: Escalated) -> None:
        try:
            await listener.approval_escalated(escalated)
        except Exception:
            logger.exception(
                "escalation listener %s failed on %s", type(listener).__name__, escalated.approval.id
            )

    @staticmethod
    async def _tell(listener: ApprovalListener, approval: Approval, opened: bool) -> None:
        try:
            if opened:
                await listener.approval_opened(approval)
            else:
                await listener.approval_updated(approval)
        except Exception:
            # A channel outage must never change an approval's fate; the channel logs and retries itself.
            logger.exception("approval channel %s failed on %s", type(listener).__name__, approval.id)


def _decide_for(policy: Policy, approval: Approval, arguments: Mapping[str, Any]) -> Decision:
    """The policy's decision on `approval`'s call with other arguments (an edit)."""
    return policy.decide(
        approval.upstream_tool, server=approval.server, agent=approval.agent, arguments=arguments
    )


def _failure_result(message: str) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": f"The approved call could not be completed: {message}"}],
        "isError": True,
    }
