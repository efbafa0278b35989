"""An approval created already decided (a call a grant let through, tracked for its task): one
transaction writes the row and both audit events, so no reader ever finds it pending."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import ApprovalConflict
from broker.approvals.transitions import CREATION_STATES
from broker.policy.escalation import EscalationStep
from broker.store.sql import SqlApprovalStore

from .builders import S, entering, new_approval, requested
from .conftest import ManualClock

pytestmark = pytest.mark.anyio

GRANTED = AuditEvent(AuditEventKind.APPROVED, "grant grt-1", {"via": "grant", "grant": "grt-1"})


async def test_an_approval_created_approved_is_never_pending(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    decided_at = clock.now - timedelta(seconds=1)
    new = new_approval(task_id="task-1", escalation=(EscalationStep(60, to=("carol",)),))

    approved = await store.create_decided(
        new,
        to=S.APPROVED,
        changes={
            "decided_by": "grant grt-1",
            "decided_at": decided_at,
            "decided_via": "grant",
            "decision_reason": "let through by a grant",
        },
        audit=(requested(), GRANTED),
    )

    assert approved.status is S.APPROVED and approved.version == 1
    assert (approved.decided_by, approved.decided_at, approved.decided_via, approved.decision_reason) == (
        "grant grt-1",
        decided_at,
        "grant",
        "let through by a grant",
    )
    assert approved.next_escalation_at is None
    assert await store.get(approved.id) == approved
    assert await store.get_by_task("task-1") == approved
    assert await store.list(statuses={S.PENDING}) == []
    assert await store.pending_count() == 0
    assert await store.due_for_expiry(clock.advance(timedelta(hours=1))) == []
    trail = await store.audit_trail(approved.id)
    assert [(record.event, record.actor) for record in trail] == [
        ("requested", "agent-1"),
        ("approved", "grant grt-1"),
    ]
    verification = await store.verify_audit_chain()
    assert verification.ok and verification.rows_checked == 2
    released = await store.transition(
        approved.id, expected={S.APPROVED}, to=S.RELEASED, audit=entering(S.RELEASED, "replica-a")
    )
    assert released.status is S.RELEASED


async def test_the_decision_fields_are_implied_from_the_last_event(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    approved = await store.create_decided(new_approval(), to=S.APPROVED, audit=(requested(), GRANTED))

    assert (approved.decided_by, approved.decided_at) == ("grant grt-1", clock.now)
    assert await store.get(approved.id) == approved


@pytest.mark.parametrize(
    "status", sorted(set(ApprovalStatus) - CREATION_STATES, key=lambda s: s.value), ids=lambda s: s.value
)
async def test_no_approval_is_created_in_a_state_it_cannot_start_in(
    store: SqlApprovalStore, status: ApprovalStatus
) -> None:
    with pytest.raises(ValueError, match="cannot be created"):
        await store.create_decided(new_approval(), to=status, audit=(requested(), entering(status)))

    assert await store.list() == []
    assert (await store.verify_audit_chain()).rows_checked == 0


async def test_a_decided_creation_without_its_decision_event_is_refused(store: SqlApprovalStore) -> None:
    with pytest.raises(ValueError, match="request and its decision"):
        await store.create_decided(new_approval(), to=S.APPROVED, audit=(requested(),))

    assert await store.list() == []


async def test_a_failed_decided_creation_leaves_nothing_behind(store: SqlApprovalStore) -> None:
    await store.create(new_approval(task_id="task-1"), audit=requested())

    with pytest.raises(ApprovalConflict, match="task"):
        await store.create_decided(
            new_approval(task_id="task-1"), to=S.APPROVED, audit=(requested(), GRANTED)
        )

    assert [approval.status for approval in await store.list()] == [S.PENDING]
    assert (await store.verify_audit_chain()).rows_checked == 1
