"""Releasing approved calls: claiming each for this replica, forwarding it, and recording its outcome.

A release is claimed by a compare-and-set (approved -> released) before the call is forwarded, so
however many replicas try, the upstream receives an approved call at most once. `Releases` is the
service's (broker.approvals.service) release desk: it starts the release of a call just approved
here, and on each sweep releases approved calls nobody is releasing (`release_approved`, oldest
first, at most `RELEASES_IN_FLIGHT` at once), fails those whose upstream stayed away too long and
ends as ``outcome_unknown`` those whose releasing replica died (`fail_stale`).

Exceptions raised by a `CallReleaser` (none escape this module)::

    ReleaseFailed          the call was not delivered (it did not run): the approval ends failed
    ReleaseOutcomeUnknown  it was sent and no answer came back: ends outcome_unknown, never re-sent
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.clock import Clock
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.outcomes import unknown_result
from broker.approvals.ports import ApprovalStore, InvalidTransition
from broker.approvals.sweeper import RELEASES_IN_FLIGHT, oldest_first

logger = logging.getLogger(__name__)


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


class Releases:
    def __init__(
        self,
        store: ApprovalStore,
        *,
        replica: str,
        clock: Clock,
        stale_release_after: timedelta,
        announce: Callable[[Approval], None],
        draining: Callable[[], bool],
    ) -> None:
        self.store = store
        self.replica = replica
        self._clock = clock
        self._stale_release_after = stale_release_after
        # A release still running when another replica would call it stale must end first.
        self._release_timeout = max(stale_release_after.total_seconds() * 0.8, 0.01)
        self._announce = announce
        self._draining = draining
        self._releaser: CallReleaser | None = None
        self._tasks: TaskGroup | None = None
        self._releasing: set[str] = set()
        self._releases_idle = anyio.Event()
        self._releases_idle.set()

    def set_releaser(self, releaser: CallReleaser) -> None:
        self._releaser = releaser

    def attach(self, tasks: TaskGroup | None) -> None:
        """The task group releases run in (None once the service stops)."""
        self._tasks = tasks

    @property
    def draining(self) -> bool:
        return self._draining()

    def busy(self, approval_id: str) -> bool:
        """Whether this process is releasing the approval right now."""
        return approval_id in self._releasing

    async def finish(self) -> None:
        """Returns once no release started by this process is still forwarding its call."""
        while self._releasing:
            await self._releases_idle.wait()

    def start(self, approval: Approval) -> None:
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
            outcome, result = ApprovalStatus.FAILED, failure_result(str(exc))
            details = {"error": str(exc)}
        except Exception as exc:
            # Anything unexpected still ends the approval: an agent must never wait on a call
            # that nobody is forwarding any more.
            logger.exception("release of %s raised", claimed.id)
            outcome, result = (
                ApprovalStatus.FAILED,
                failure_result(f"internal error while forwarding: {exc}"),
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

    async def release_approved(self, now: datetime) -> None:
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
            changes={"completed_at": now, "result": failure_result(message)},
            audit=AuditEvent(AuditEventKind.FAILED, self.replica, {"error": "upstream unreachable"}),
        )
        self._announce(failed)

    async def fail_stale(self, now: datetime) -> None:
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


def failure_result(message: str) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": f"The approved call could not be completed: {message}"}],
        "isError": True,
    }
