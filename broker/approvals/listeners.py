"""Telling the channels about approvals: the listeners of one service, called in its task group.

Listeners (Slack, the web inbox, metrics, webhooks to come) hear every change the service makes.
Only views (the web inbox) may also hear what other replicas announce (`mirror`): a channel that
acts on a change (posting to Slack, counting decisions) hears it from the replica that made it
only, or it would act twice. Escalation listeners hear the steps this replica took. A listener's
failure is logged and never changes an approval's fate.
"""

from __future__ import annotations

import logging
from typing import Protocol

from anyio.abc import TaskGroup

from broker.approvals.escalation import Escalated, EscalationListener
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore, StoreUnavailable

logger = logging.getLogger(__name__)


class ApprovalListener(Protocol):
    """A channel that shows approvals to people (Slack, the web inbox)."""

    async def approval_opened(self, approval: Approval) -> None: ...

    async def approval_updated(self, approval: Approval) -> None: ...


class Listeners:
    def __init__(self, store: ApprovalStore) -> None:
        self.store = store
        self._listeners: list[ApprovalListener] = []
        self._mirrors: list[ApprovalListener] = []
        self._escalation_listeners: list[EscalationListener] = []
        self._tasks: TaskGroup | None = None

    def add(self, listener: ApprovalListener, *, hears_other_replicas: bool = False) -> None:
        self._listeners.append(listener)
        if hears_other_replicas:
            self._mirrors.append(listener)

    def add_escalation(self, listener: EscalationListener) -> None:
        self._escalation_listeners.append(listener)

    def attach(self, tasks: TaskGroup | None) -> None:
        """The task group listeners are called in (None once the service stops: nobody is told)."""
        self._tasks = tasks

    def announce(self, approval: Approval, *, opened: bool = False) -> None:
        if self._tasks is None:
            return
        for listener in self._listeners:
            self._tasks.start_soon(self._tell, listener, approval, opened)

    def mirror(self, approval_id: str) -> None:
        """Another replica changed the approval: the views re-read and show it."""
        if self._mirrors and self._tasks is not None:
            self._tasks.start_soon(self._mirror, approval_id)

    def announce_escalation(self, escalated: Escalated) -> None:
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
