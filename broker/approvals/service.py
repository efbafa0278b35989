"""The approval service: the only code that moves a held call through its states.

The proxy parks calls here and waits on them; the channels (Slack, the web inbox, the HTTP
API, the CLI) decide through `decide`; the sweeper expires what nobody answered. Every move
is a compare-and-set in the store, so any number of services on one database (replicas)
agree on one outcome, and a release is claimed by exactly one of them before the call is
forwarded: the upstream receives an approved call at most once.

Around it, each in its own module: deciding, votes, edits and grants (broker.approvals.deciding,
whose `NotAllowedToDecide` completes the exception tree of broker.approvals.ports) and releasing
(broker.approvals.releasing). The names they export that callers used to import from here still
import from here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup

from broker.approvals.audit import AuditEvent, AuditEventKind, requested_event
from broker.approvals.clock import Clock, utc_now
from broker.approvals.deciding import Decider, NotAllowedToDecide, VoteListener
from broker.approvals.edits import EditStore
from broker.approvals.eligibility import ANY_APPROVER, Eligibility
from broker.approvals.escalation import EscalationListener, escalate_due
from broker.approvals.health import StoreHealth
from broker.approvals.listeners import ApprovalListener, Listeners
from broker.approvals.model import Approval, ApprovalStatus, Approver, NewApproval
from broker.approvals.ports import (
    ApprovalNotFound,
    ApprovalStore,
    EscalationStore,
    InvalidTransition,
    StoreUnavailable,
    VoteStore,
)
from broker.approvals.releasing import CallReleaser, ReleaseFailed, ReleaseOutcomeUnknown, Releases
from broker.approvals.sweeper import TIMEOUT_ACTOR, SweepStep, expire
from broker.policy import Policy

__all__ = [
    "POLICY_ACTOR",
    "TIMEOUT_ACTOR",
    "ApprovalListener",
    "ApprovalService",
    "Approver",
    "CallReleaser",
    "NotAllowedToDecide",
    "ReleaseFailed",
    "ReleaseOutcomeUnknown",
    "VoteListener",
]

logger = logging.getLogger(__name__)

POLICY_ACTOR = "policy"


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
        self._sleep = sleep
        self._policy = policy
        self._principals = principals or {}
        self._eligibility = Eligibility(self._default_approvers, self._principals)
        self._escalations = escalations
        self._listeners = Listeners(store)
        self._drain_deadline = math.inf
        self._releases = Releases(
            store,
            replica=replica,
            clock=clock,
            stale_release_after=stale_release_after,
            announce=self._announce,
            draining=lambda: self.draining,
        )
        self.release_now = self._releases.release_now
        """Claims and forwards an approved call; None when another service claimed it first."""
        self._decider = Decider(
            store,
            clock=clock,
            policy=policy,
            eligibility=self._eligibility,
            votes=votes,
            edits=edits,
            tool_schema=tool_schema,
            fresh=self._fresh,
            expire=self._expire,
            announce=self._announce,
            start_release=self._releases.start,
        )
        self.may_decide = self._decider.may_decide
        self.grant_allowance = self._decider.grant_allowance
        self.decide = self._decider.decide
        self.open_granted = self._decider.open_granted
        self.add_vote_listener = self._decider.add_vote_listener
        self.add_edit_listener = self._decider.add_edit_listener
        self.add_grant_listener = self._decider.add_grant_listener
        self._watches: dict[str, _Watch] = {}
        self._sweep_steps: list[SweepStep] = []
        self._changes_seen: int | None = None
        self._tasks: TaskGroup | None = None
        self.health = health if health is not None else StoreHealth(store.probe, up_interval=sweep_interval)
        """Whether the store may be relied on; the proxy forwards nothing while it is down (fail closed)."""

    # -- wiring ------------------------------------------------------------------------------

    def set_releaser(self, releaser: CallReleaser) -> None:
        self._releases.set_releaser(releaser)

    def add_listener(self, listener: ApprovalListener, *, hears_other_replicas: bool = False) -> None:
        """`listener` hears every change this service makes. With `hears_other_replicas` it also
        hears those other replicas announce (for views such as the web inbox); channels that act
        on a change (posting to Slack, counting decisions) must not, or they would act twice."""
        self._listeners.add(listener, hears_other_replicas=hears_other_replicas)

    def add_escalation_listener(self, listener: EscalationListener) -> None:
        """`listener` hears each escalation step this replica took (see broker.approvals.escalation)."""
        self._listeners.add_escalation(listener)

    def add_sweep_step(self, step: SweepStep) -> None:
        """`step` runs at the end of every sweep of this service (see broker.approvals.sweeper.SweepStep)."""
        self._sweep_steps.append(step)

    @asynccontextmanager
    async def running(self, *, sweep: bool = True) -> AsyncIterator[ApprovalService]:
        """Background work: releases, listener calls and (unless disabled) the sweeper loop."""
        with contextlib.suppress(StoreUnavailable):
            # Before any agent waits, so the first sweep's re-check misses no change.
            self._changes_seen, _ = await self.store.changes_since(None)
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._releases.attach(tasks)
            self._listeners.attach(tasks)
            if sweep:
                tasks.start_soon(self._sweep_forever)
            tasks.start_soon(self.health.run)
            try:
                yield self
            finally:
                tasks.cancel_scope.cancel()
                self._tasks = None
                self._releases.attach(None)
                self._listeners.attach(None)

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
        requested = requested_event(new)
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
        oldest first, see `Releases.release_approved`), end releases whose replica died, notice outside
        changes to approvals someone here waits on, then run the added sweep steps. Returns how many
        approvals it expired."""
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
                self._listeners.announce_escalation(escalated)
        await self._releases.release_approved(now)
        await self._releases.fail_stale(now)
        await self._recheck_watched()
        for step in self._sweep_steps:
            await step(now)
        return expired

    async def _expire(self, approval: Approval) -> tuple[Approval, bool]:
        expired, won = await expire(self.store, approval, self._clock())
        if won:
            self._announce(expired)
        return expired, won

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
        self._listeners.mirror(approval_id)
        if (
            status is ApprovalStatus.APPROVED
            and approval_id in self._watches
            and not self._releases.busy(approval_id)
            and self._tasks is not None
            and not self.draining
        ):
            self._tasks.start_soon(self._release_if_approved, approval_id)

    def notice_external_changes(self) -> None:
        """News of other processes' changes may have been missed (a lost notification connection):
        every local waiter re-reads its approval."""
        for approval_id in list(self._watches):
            self._wake(approval_id)

    async def _release_if_approved(self, approval_id: str) -> None:
        try:
            approval = await self.store.get(approval_id)
        except StoreUnavailable:
            return  # the sweeper retries once the store is back
        if approval is not None and approval.status is ApprovalStatus.APPROVED:
            self._releases.start(approval)

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
        await self._releases.finish()

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
        self._listeners.announce(approval, opened=opened)
