"""`EscalationStore` on the approval store's database (the columns of migration 0007).

A due step is found with one range read on ``(status, next_escalation_at)``. Taking it is one
conditional UPDATE (``WHERE status = 'pending' AND escalation_step = :step - 1 AND expires_at >
:now``) with its ``escalated`` audit event in the same transaction: two replicas sweeping at the
same moment both try, and exactly one row changes. A call already past its deadline is never
escalated (and so never rescued by a step's ``extend``): expiry wins.

Failures: StoreUnavailable (unreachable, timed out, refused), as everywhere in broker.store.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from broker.approvals.audit import AuditEvent
from broker.approvals.clock import require_utc
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalNotFound
from broker.store.rows import approval_from_row
from broker.store.sql import MAX_LIST_LIMIT, SqlApprovalStore
from broker.store.tables import approvals


class SqlEscalationStore:
    """EscalationStore (broker.approvals.ports) in the store's database, shared by every replica on it."""

    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store

    async def due_for_escalation(self, now: datetime, *, limit: int = 100) -> list[Approval]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit!r}")
        query = (
            select(approvals)
            .where(
                approvals.c.status == ApprovalStatus.PENDING.value,
                approvals.c.next_escalation_at <= require_utc(now, field="now"),
            )
            .order_by(approvals.c.next_escalation_at, approvals.c.id)
            .limit(limit)
        )
        async with self._store.reading("find approvals due to escalate") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [approval_from_row(row) for row in rows]

    async def escalate(
        self,
        approval_id: str,
        *,
        step: int,
        now: datetime,
        expires_at: datetime,
        next_escalation_at: datetime | None,
        audit: AuditEvent,
    ) -> tuple[Approval, bool]:
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"escalation steps count from 1, got {step!r}")
        values = {
            "escalation_step": step,
            "expires_at": require_utc(expires_at, field="expires_at"),
            "next_escalation_at": None
            if next_escalation_at is None
            else require_utc(next_escalation_at, field="next_escalation_at"),
        }
        async with self._store.transaction("escalate approval") as conn:
            row = (
                (
                    await conn.execute(
                        update(approvals)
                        .where(
                            approvals.c.id == approval_id,
                            approvals.c.status == ApprovalStatus.PENDING.value,
                            approvals.c.escalation_step == step - 1,
                            approvals.c.expires_at > require_utc(now, field="now"),
                        )
                        .values(version=approvals.c.version + 1, **values)
                        .returning(*approvals.c)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                current = (
                    (await conn.execute(select(approvals).where(approvals.c.id == approval_id)))
                    .mappings()
                    .first()
                )
                if current is None:
                    raise ApprovalNotFound(approval_id)
                return approval_from_row(current), False
            await self._store.append_in(conn, audit.for_approval(approval_id))
            return approval_from_row(row), True
