"""Escalation through the store and the service, on SQLite and PostgreSQL, driven by a ManualClock
and `sweep()` calls (no waiting): who may decide after each step, the deadline kept or extended,
expiry still working, late sweeps taking every due step, and exactly one replica taking a step."""

from __future__ import annotations

from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest

from broker.approvals.escalation import Escalated, escalation_text
from broker.approvals.model import ApprovalStatus, Approver
from broker.approvals.service import ApprovalService, NotAllowedToDecide
from broker.approvals.verdict import Approve
from broker.policy.escalation import EscalationStep
from broker.store.escalations import SqlEscalationStore
from tests.store.builders import new_approval
from tests.store.conftest import ManualClock

from .conftest import RecordingListener, ServiceFactory

pytestmark = pytest.mark.anyio

S = ApprovalStatus
LEADS = EscalationStep(600.0, ("carol", "@oncall-leads"), ("slack:#escalations",), None)
CTO = EscalationStep(900.0, ("dave",), (), 1800.0)
CAROL = Approver("carol")


class HeardSteps:
    def __init__(self) -> None:
        self.steps: list[Escalated] = []

    async def approval_escalated(self, escalated: Escalated) -> None:
        self.steps.append(escalated)


def held(*steps: EscalationStep, **overrides: object):  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {
        "approvers": ("alice",),
        "timeout": timedelta(minutes=20),
        "escalation": steps,
    }
    fields.update(overrides)
    return new_approval(**fields)


async def escalated_events(replica: ApprovalService, approval_id: str) -> list[dict[str, object]]:
    return [dict(r.details) for r in await replica.store.audit_trail(approval_id) if r.event == "escalated"]


async def test_a_step_adds_approvers_keeps_the_deadline_and_is_audited(
    service: ServiceFactory, clock: ManualClock, listener: RecordingListener
) -> None:
    async with service("replica-a") as replica:
        heard = HeardSteps()
        replica.add_escalation_listener(heard)
        approval, _ = await replica.open(held(LEADS))
        assert approval.next_escalation_at == approval.created_at + timedelta(minutes=10)
        assert "not an approver" in (replica.may_decide(approval, CAROL) or "")

        clock.advance(timedelta(minutes=9, seconds=59))
        await replica.sweep()
        assert (await replica.store.get(approval.id)).escalation_step == 0  # type: ignore[union-attr]

        clock.advance(timedelta(seconds=1))
        await replica.sweep()
        now = await replica.store.get(approval.id)
        assert now is not None and now.escalation_step == 1 and now.next_escalation_at is None
        assert now.expires_at == approval.expires_at  # kept
        assert now.escalated_to == ("carol", "@oncall-leads")
        assert escalation_text(now) == "escalated to carol, @oncall-leads"
        assert await escalated_events(replica, approval.id) == [
            {
                "step": 1,
                "added_approvers": ["carol", "@oncall-leads"],
                "channels": ["slack:#escalations"],
                "expires_at": approval.expires_at.isoformat(),
                "deadline_extended": False,
                "replica": "replica-a",
            }
        ]
        with anyio.fail_after(10):
            await listener.until(lambda: any(a.escalation_step == 1 for a in listener.updated))
            while not heard.steps:
                await anyio.lowlevel.checkpoint()  # the listener runs in the service's task group
        assert heard.steps[0].number == 1 and heard.steps[0].step == LEADS

        # A member of the added group, and the added person, may now decide.
        assert replica.may_decide(now, Approver("erin", frozenset({"oncall-leads"}))) is None
        decided = await replica.decide(approval.id, Approve(), approver=CAROL, via="web")
        assert decided.status is S.APPROVED and decided.decided_by == "carol"
        await replica.sweep()  # nothing more to escalate once decided
        assert len(await escalated_events(replica, approval.id)) == 1


async def test_an_extending_step_moves_the_deadline_and_expiry_still_works(
    service: ServiceFactory, clock: ManualClock
) -> None:
    async with service() as replica:
        approval, _ = await replica.open(held(LEADS, CTO))
        clock.advance(timedelta(minutes=15))
        await replica.sweep()  # late: both steps due, taken one after the other
        now = await replica.store.get(approval.id)
        assert now is not None and now.escalation_step == 2
        assert now.expires_at == approval.expires_at + timedelta(minutes=30)
        assert [event["step"] for event in await escalated_events(replica, approval.id)] == [1, 2]
        assert now.escalated_to == ("carol", "@oncall-leads", "dave")

        clock.advance(timedelta(minutes=20))  # past the rule's timeout, not the extended deadline
        assert await replica.sweep() == 0
        clock.advance(timedelta(minutes=15))
        assert await replica.sweep() == 1
        expired = await replica.store.get(approval.id)
        assert expired is not None and expired.status is S.EXPIRED
        with pytest.raises(Exception, match="expired"):
            await replica.decide(approval.id, Approve(), approver=Approver("dave"), via="web")


async def test_an_escalated_approver_counts_toward_a_quorum(
    service: ServiceFactory, clock: ManualClock
) -> None:
    async with service() as replica:
        approval, _ = await replica.open(held(LEADS, quorum=2))
        await replica.decide(approval.id, Approve(), approver=Approver("alice"), via="web")
        with pytest.raises(NotAllowedToDecide):
            await replica.decide(approval.id, Approve(), approver=CAROL, via="web")
        clock.advance(timedelta(minutes=10))
        await replica.sweep()
        decided = await replica.decide(approval.id, Approve(), approver=CAROL, via="slack")
        assert decided.status is S.APPROVED and decided.decided_by == "alice, carol"


async def test_a_call_without_steps_never_escalates(service: ServiceFactory, clock: ManualClock) -> None:
    async with service() as replica:
        approval, _ = await replica.open(held())
        assert approval.next_escalation_at is None
        clock.advance(timedelta(minutes=19))
        await replica.sweep()
        assert await escalated_events(replica, approval.id) == []


async def test_two_replicas_sweeping_together_take_each_step_once(
    service: ServiceFactory, clock: ManualClock
) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        heard_a, heard_b = HeardSteps(), HeardSteps()
        replica_a.add_escalation_listener(heard_a)
        replica_b.add_escalation_listener(heard_b)
        approvals = [(await replica_a.open(held(LEADS, CTO, arguments={"n": n})))[0] for n in range(10)]
        for minutes in (10, 5):
            clock.advance(timedelta(minutes=minutes))
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    for _ in range(3):
                        group.start_soon(replica_a.sweep)
                        group.start_soon(replica_b.sweep)
        for approval in approvals:
            assert [event["step"] for event in await escalated_events(replica_a, approval.id)] == [1, 2]
        with anyio.fail_after(10):
            while len(heard_a.steps) + len(heard_b.steps) < 20:
                await anyio.lowlevel.checkpoint()
        told = sorted((e.approval.id, e.number) for e in heard_a.steps + heard_b.steps)
        assert told == sorted((a.id, n) for a in approvals for n in (1, 2))


async def test_the_store_lets_exactly_one_of_racing_stores_take_a_step(
    open_store,
    clock: ManualClock,  # type: ignore[no-untyped-def]
) -> None:
    stores = [open_store() for _ in range(4)]
    approval = await stores[0].create(held(LEADS), audit=_requested())
    assert await SqlEscalationStore(stores[0]).due_for_escalation(clock()) == []
    clock.advance(timedelta(minutes=10))
    due = await SqlEscalationStore(stores[1]).due_for_escalation(clock())
    assert [a.id for a in due] == [approval.id]
    wins: list[bool] = []

    async def take(store) -> None:  # type: ignore[no-untyped-def]
        _, won = await SqlEscalationStore(store).escalate(
            approval.id,
            step=1,
            now=clock(),
            expires_at=approval.expires_at,
            next_escalation_at=None,
            audit=_escalated(),
        )
        wins.append(won)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for _ in range(5):
                for store in stores:
                    group.start_soon(take, store)
    assert wins.count(True) == 1 and len(wins) == 20
    assert await SqlEscalationStore(stores[2]).due_for_escalation(clock()) == []
    trail = await stores[3].audit_trail(approval.id)
    assert [r.event for r in trail] == ["requested", "escalated"]
    assert (await stores[3].verify_audit_chain()).ok


async def test_the_store_never_escalates_a_call_past_its_deadline(
    open_store,
    clock: ManualClock,  # type: ignore[no-untyped-def]
) -> None:
    store = open_store()
    approval = await store.create(held(LEADS), audit=_requested())
    clock.advance(timedelta(minutes=20))
    current, won = await SqlEscalationStore(store).escalate(
        approval.id,
        step=1,
        now=clock(),
        expires_at=approval.expires_at + timedelta(hours=1),
        next_escalation_at=None,
        audit=_escalated(),
    )
    assert not won and current.escalation_step == 0 and current.expires_at == approval.expires_at


def _requested():  # type: ignore[no-untyped-def]
    from tests.store.builders import requested

    return requested()


def _escalated():  # type: ignore[no-untyped-def]
    from broker.approvals.audit import AuditEvent, AuditEventKind

    return AuditEvent(AuditEventKind.ESCALATED, "escalation", {"step": 1})
