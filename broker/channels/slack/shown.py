"""What each approval's Slack message shows: as this process last wrote or found it, and else as
the audit trail records it (the status named by the approval's last ``notified`` or
``slack_updated`` event, and while it waits, the escalation step and arguments it was rewritten to show).
"""

from __future__ import annotations

from collections import OrderedDict

from broker.approvals.audit import AuditEventKind
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore

UPDATED = "slack_updated"
SHOWN_EVENTS = frozenset({AuditEventKind.NOTIFIED.value, UPDATED})
"""Audit events whose ``status`` detail says what the message showed from then on."""


class ShownMessages:
    """The in-process memories that spare the notifier store reads, backed by the audit trail."""

    MEMORY = 10_000
    """Approvals remembered in-process as settled (or refused by Slack), to spare the store reads."""

    def __init__(self, store: ApprovalStore) -> None:
        self._store = store
        self._settled: OrderedDict[str, ApprovalStatus] = OrderedDict()
        """Approval id -> a status at which its message (or its absence) was found truthful."""
        self._refused: OrderedDict[str, ApprovalStatus] = OrderedDict()
        """Approval id -> the status at which Slack refused its message (not retried at that status)."""
        self._escalation_shown: dict[str, int] = {}
        """Approval id -> the escalation step its waiting message was last rewritten to show."""
        self._arguments_shown: dict[str, str] = {}
        """Approval id -> the arguments hash its waiting message was last rewritten to show (edits)."""

    def settled_at(self, approval_id: str) -> ApprovalStatus | None:
        return self._settled.get(approval_id)

    def refused_at(self, approval_id: str) -> ApprovalStatus | None:
        return self._refused.get(approval_id)

    def settle(self, approval_id: str, status: ApprovalStatus) -> None:
        _remember(self._settled, approval_id, status, self.MEMORY)

    def refuse(self, approval_id: str, status: ApprovalStatus) -> None:
        _remember(self._refused, approval_id, status, self.MEMORY)

    def rewritten(self, current: Approval) -> None:
        """The message was just rewritten to show `current`."""
        self.settle(current.id, current.status)
        self._escalation_shown[current.id] = current.escalation_step
        if len(self._escalation_shown) > self.MEMORY:
            del self._escalation_shown[next(iter(self._escalation_shown))]
        if current.original_arguments is not None:
            self._arguments_shown[current.id] = current.arguments_hash
            if len(self._arguments_shown) > self.MEMORY:
                del self._arguments_shown[next(iter(self._arguments_shown))]

    async def shown(self, current: Approval) -> ApprovalStatus | None:
        """The status the approval's message shows, as far as the records say."""
        if current.status is ApprovalStatus.PENDING:
            if current.escalation_step and not await self._shows_escalation(current):
                return None  # the waiting message must say who else is asked now
            if current.original_arguments is not None and not await self._shows_arguments(current):
                return None  # an approver edited the call: the waiting message must show what would run
            return ApprovalStatus.PENDING
        if self._settled.get(current.id) is current.status:
            return current.status
        for record in reversed(await self._store.audit_trail(current.id)):
            if record.event in SHOWN_EVENTS:
                try:
                    return ApprovalStatus(str(record.details.get("status")))
                except ValueError:
                    return None  # recorded before messages named their status: rewrite it to be sure
        return None

    async def _shows_escalation(self, current: Approval) -> bool:
        if self._escalation_shown.get(current.id, 0) >= current.escalation_step:
            return True
        for record in reversed(await self._store.audit_trail(current.id)):
            if record.event in SHOWN_EVENTS:
                return int(record.details.get("escalation_step") or 0) >= current.escalation_step
        return False

    async def _shows_arguments(self, current: Approval) -> bool:
        if self._arguments_shown.get(current.id) == current.arguments_hash:
            return True
        for record in reversed(await self._store.audit_trail(current.id)):
            if record.event in SHOWN_EVENTS:
                return record.details.get("arguments_sha256") == current.arguments_hash
        return False


def _remember(
    memory: OrderedDict[str, ApprovalStatus], approval_id: str, status: ApprovalStatus, size: int
) -> None:
    memory[approval_id] = status
    memory.move_to_end(approval_id)
    while len(memory) > size:
        memory.popitem(last=False)
