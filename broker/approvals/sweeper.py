"""Sweep steps of the approval service: expiring what nobody decided in time, and reading the
approvals a sweep works through (all of them, oldest first, a page at a time).

The other steps live with what they act on: escalation in broker.approvals.escalation, failing
unreleasable and stale releases in broker.approvals.releasing; the service runs them in order.

A sweep must reach every approved call (an upstream that comes back after an outage may find
thousands waiting) and every released one (a replica that died may have left many behind), in
the order the calls were made, without holding one large result in memory. Pages follow the
store's (created_at, id) order, so rows that change status while the sweep reads do not make it
skip or repeat others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from datetime import datetime

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore, InvalidTransition, ListPosition

TIMEOUT_ACTOR = "timeout"

PAGE_SIZE = 100
RELEASES_IN_FLIGHT = 100
"""Releases one replica forwards at once from a sweep; the rest stay approved, oldest first,
for the next pass, so a large backlog does not open thousands of upstream requests together."""

SweepStep = Callable[[datetime], Awaitable[object]]
"""Housekeeping of another domain (pruning tool-definition events) that rides on the sweep: called
with the sweep's time after the approval steps, on every replica that sweeps, so it must bound
its own work per pass and tolerate other replicas doing the same at once."""


async def oldest_first(
    store: ApprovalStore, statuses: Collection[ApprovalStatus], *, page_size: int = PAGE_SIZE
) -> AsyncIterator[Approval]:
    """Every approval in `statuses`, oldest first (ties by id), read `page_size` rows at a time."""
    after: ListPosition | None = None
    while True:
        page = await store.list(statuses=statuses, limit=page_size, after=after, oldest_first=True)
        for approval in page:
            yield approval
        if len(page) < page_size:
            return
        after = ListPosition.of(page[-1])


async def expire(store: ApprovalStore, approval: Approval, now: datetime) -> tuple[Approval, bool]:
    """Expires a pending approval: the row as it now stands, and whether this call expired it
    (False when a decision or another replica's sweep got there first)."""
    try:
        expired = await store.transition(
            approval.id,
            expected={ApprovalStatus.PENDING},
            to=ApprovalStatus.EXPIRED,
            changes={
                "decided_by": TIMEOUT_ACTOR,
                "decided_at": now,
                "decided_via": TIMEOUT_ACTOR,
                "decision_reason": "nobody decided before the deadline; auto-denied",
            },
            audit=AuditEvent(
                AuditEventKind.EXPIRED, TIMEOUT_ACTOR, {"expires_at": approval.expires_at.isoformat()}
            ),
        )
    except InvalidTransition as lost:
        return lost.current, False
    return expired, True
