"""A backlog of approved calls: every one is released when its upstream comes back, oldest first,
and every release a dead replica left behind is settled, however many there are."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import ApprovalStatus
from broker.approvals.service import Approver
from broker.approvals.sweeper import PAGE_SIZE, RELEASES_IN_FLIGHT
from broker.approvals.verdict import Approve
from tests.store.builders import new_approval
from tests.store.conftest import ManualClock

from .conftest import CountingReleaser, RecordingListener, ServiceFactory, sqlite_only

pytestmark = pytest.mark.anyio

S = ApprovalStatus
ALICE = Approver("alice")
BACKLOG = 260
"""More than the 200 rows the sweep used to read, more than two pages, more than the releases
allowed in flight at once."""


async def test_every_approved_call_waiting_for_its_upstream_is_released_oldest_first(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener, clock: ManualClock
) -> None:
    assert BACKLOG > 2 * PAGE_SIZE and BACKLOG > RELEASES_IN_FLIGHT
    releaser.upstream_connected = False
    async with service() as approvals:
        made = []
        for n in range(BACKLOG):
            approval, _ = await approvals.open(new_approval(arguments={"order": n}))
            await approvals.decide(approval.id, Approve(), approver=ALICE, via="api")
            made.append(approval.id)
            clock.advance(timedelta(milliseconds=500))
        await approvals.sweep()
        assert releaser.calls == []  # the upstream is down: nothing is claimed, nothing fails

        releaser.upstream_connected = True
        with anyio.fail_after(120):
            while await approvals.store.list(statuses={S.APPROVED}, limit=1):
                await approvals.sweep()
                await approvals.finish_releases()
            await listener.until(
                lambda: len({a.id for a in listener.updated if a.status is S.COMPLETED}) == BACKLOG
            )

        assert [call.id for call in releaser.calls] == made
        completed = [await approvals.store.get(approval_id) for approval_id in made]
        assert all(a is not None and a.status is S.COMPLETED for a in completed)


@sqlite_only
async def test_every_release_a_dead_replica_left_behind_ends_outcome_unknown(
    service: ServiceFactory, releaser: CountingReleaser, clock: ManualClock
) -> None:
    stale_after = timedelta(minutes=15)
    async with service("survivor", stale_release_after=stale_after) as survivor:
        store = survivor.store
        left = []
        for n in range(PAGE_SIZE + 30):
            approval = await store.create(
                new_approval(arguments={"order": n}), audit=AuditEvent(AuditEventKind.REQUESTED, "agent-1")
            )
            await store.transition(
                approval.id,
                expected={S.PENDING},
                to=S.APPROVED,
                audit=AuditEvent(AuditEventKind.APPROVED, "alice"),
            )
            await store.transition(
                approval.id,
                expected={S.APPROVED},
                to=S.RELEASED,
                changes={"released_by": "replica-dead", "released_at": clock.now},
                audit=AuditEvent(AuditEventKind.RELEASED, "replica-dead"),
            )
            left.append(approval.id)
        clock.advance(stale_after)
        await survivor.sweep()

        settled = [await store.get(approval_id) for approval_id in left]
        assert {a.status for a in settled if a is not None} == {S.OUTCOME_UNKNOWN}
        assert releaser.calls == []  # nothing in doubt is re-sent
