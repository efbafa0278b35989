"""What survives a service going away, and how waiters learn about decisions made elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import anyio
import pytest

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.service import ApprovalService, Approver
from broker.approvals.verdict import Approve, Deny
from broker.store.sql import SqlApprovalStore
from tests.store.builders import new_approval
from tests.store.conftest import ManualClock

from .conftest import ORDER_RESULT, CountingReleaser, RecordingListener, ServiceFactory

pytestmark = pytest.mark.anyio

S = ApprovalStatus
STALE_AFTER = timedelta(minutes=15)


async def test_pending_approvals_outlive_the_service_that_parked_them(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    async with service("before-restart") as before:
        waiting = [(await before.open(new_approval(arguments={"order": n})))[0] for n in range(3)]
        denied, _ = await before.open(new_approval(arguments={"order": "denied"}))
        await before.decide(denied.id, Deny(), approver=Approver("alice"), via="api")

    async with service("after-restart") as after:
        pending = await after.store.list(statuses={S.PENDING})
        assert sorted(pending, key=lambda a: a.id) == waiting
        assert (await after.store.get(denied.id)) is not None

        # The agent's repeated call finds its approval; a human can still decide it.
        attached, created = await after.open(new_approval(arguments={"order": 1}))
        assert (attached.id, created) == (waiting[1].id, False)
        await after.decide(attached.id, Approve(), approver=Approver("alice"), via="api")
        with anyio.fail_after(10):
            assert (await after.wait(attached.id, 10)).status is S.COMPLETED
        assert [call.id for call in releaser.calls] == [attached.id]


async def test_a_call_approved_while_no_service_ran_is_released_once_by_the_next_ones(
    service: ServiceFactory,
    open_store: Callable[[], SqlApprovalStore],
    releaser: CountingReleaser,
    listener: RecordingListener,
    clock: ManualClock,
) -> None:
    async with service("crashed") as before:
        approval, _ = await before.open(new_approval())

    # A decision written straight to the database, e.g. by a replica that died right after committing it.
    outside = open_store()
    await outside.transition(
        approval.id,
        expected={S.PENDING},
        to=S.APPROVED,
        changes={"decided_by": "alice", "decided_at": clock.now, "decided_via": "api"},
        audit=AuditEvent(AuditEventKind.APPROVED, "alice", {"via": "api"}),
    )
    await outside.close()

    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(replica_a.sweep)
                    group.start_soon(replica_b.sweep)
        # Sweeps only start releases; whichever replica claimed it tells the channels when it is done.
        await listener.until(lambda: bool(listener.updates(approval.id, S.COMPLETED)))

        finished = await replica_a.store.get(approval.id)
        assert finished is not None and finished.status is S.COMPLETED and finished.result == ORDER_RESULT
        assert finished.released_by in {"replica-a", "replica-b"}
        assert releaser.calls_for(approval.id) == 1
        await replica_a.sweep()
        await replica_b.sweep()
        assert releaser.calls_for(approval.id) == 1
        trail = [r.event for r in await replica_a.store.audit_trail(approval.id)]
        assert trail == ["requested", "approved", "released", "completed"]


async def test_a_release_cut_off_by_a_crash_ends_outcome_unknown_and_is_never_resent(
    service: ServiceFactory,
    open_store: Callable[[], SqlApprovalStore],
    releaser: CountingReleaser,
    clock: ManualClock,
) -> None:
    async with service("crashed") as before:
        approval, _ = await before.open(new_approval())
    # The crashed replica had claimed the release (the upstream may or may not have run it).
    outside = open_store()
    await outside.transition(
        approval.id, expected={S.PENDING}, to=S.APPROVED, audit=AuditEvent(AuditEventKind.APPROVED, "alice")
    )
    await outside.transition(
        approval.id,
        expected={S.APPROVED},
        to=S.RELEASED,
        changes={"released_by": "replica-dead", "released_at": clock.now},
        audit=AuditEvent(AuditEventKind.RELEASED, "replica-dead"),
    )
    await outside.close()

    async with service("survivor", stale_release_after=STALE_AFTER) as survivor:
        clock.advance(STALE_AFTER - timedelta(seconds=1))
        await survivor.sweep()
        still = await survivor.store.get(approval.id)
        assert still is not None and still.status is S.RELEASED

        clock.advance(timedelta(seconds=1))
        await survivor.sweep()
        await survivor.sweep()

        unknown = await survivor.store.get(approval.id)
        assert unknown is not None and unknown.status is S.OUTCOME_UNKNOWN
        assert unknown.completed_at == clock.now
        assert unknown.result is not None and unknown.result["isError"] is True
        text = unknown.result["content"][0]["text"]
        assert text == "the broker replica replica-dead that sent it stopped before the upstream answered"
        assert releaser.calls == []
        trail = await survivor.store.audit_trail(approval.id)
        assert [(r.event, r.actor) for r in trail][-2:] == [
            ("released", "replica-dead"),
            ("outcome_unknown", "survivor"),
        ]
        assert dict(trail[-1].details) == {
            "error": "the forwarding replica stopped",
            "replica": "replica-dead",
        }
        assert (await survivor.store.verify_audit_chain()).ok
        with anyio.fail_after(5):
            assert (await survivor.wait(approval.id, 5)) == unknown


class ConsultedClock:
    """The service's clock, which also tells the test each time it is read.

    `ApprovalService.wait` reads the clock right before it parks on its wake-up event, with no
    await in between, so once the test sees a read the waiter is parked."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self.consulted = anyio.Event()

    def __call__(self) -> datetime:
        self.consulted.set()
        return self._clock()


async def test_a_waiter_learns_of_another_replicas_decision_on_its_next_sweep(
    service: ServiceFactory, clock: ManualClock
) -> None:
    waiter_clock = ConsultedClock(clock)
    async with service("waiting", service_clock=waiter_clock) as waiting, service("deciding") as deciding:
        approval, _ = await waiting.open(new_approval())
        waiter_clock.consulted = anyio.Event()
        outcome: list[Approval] = []
        returned = anyio.Event()

        async def wait_for_outcome() -> None:
            outcome.append(await waiting.wait(approval.id, 3600))
            returned.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(wait_for_outcome)
                await waiter_clock.consulted.wait()

                await deciding.decide(approval.id, Deny(), approver=Approver("bob"), via="slack")
                # Nothing tells the waiting replica yet: its own sweep has to notice.
                assert not returned.is_set()
                await waiting.sweep()
                await returned.wait()

        assert outcome[0].status is S.DENIED and outcome[0].decided_by == "bob"


class ReadsHeldOpen:
    """A real store whose next `get` is held after reading, to put a decision between that read and its return."""

    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store
        self.armed = False
        self.read_done = anyio.Event()
        self.resume = anyio.Event()

    async def get(self, approval_id: str) -> Approval | None:
        approval = await self._store.get(approval_id)
        if self.armed:
            self.armed = False
            self.read_done.set()
            await self.resume.wait()
        return approval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_decision_landing_while_a_waiter_reads_still_wakes_it(
    service: ServiceFactory, open_store: Callable[[], SqlApprovalStore]
) -> None:
    store = ReadsHeldOpen(open_store())
    async with service("replica-a", store=cast(SqlApprovalStore, store)) as approvals:
        approval, _ = await approvals.open(new_approval())
        outcome: list[Approval] = []

        async def wait_for_outcome(service_: ApprovalService) -> None:
            outcome.append(await service_.wait(approval.id, 3600))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                store.armed = True
                group.start_soon(wait_for_outcome, approvals)
                await store.read_done.wait()
                # The waiter holds a pending row; the decision commits and is announced meanwhile.
                await approvals.decide(approval.id, Deny(), approver=Approver("alice"), via="api")
                store.resume.set()

        assert outcome[0].status is S.DENIED
