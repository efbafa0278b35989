"""Racing deciders, deadlines and sweepers, in one service and across replicas sharing a database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import pytest

from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import InvalidTransition
from broker.approvals.service import TIMEOUT_ACTOR, ApprovalService, Approver
from broker.approvals.verdict import Approve, verdict_of
from tests.store.builders import new_approval
from tests.store.conftest import ManualClock

from .conftest import CountingReleaser, RecordingListener, ServiceFactory, sqlite_only

pytestmark = pytest.mark.anyio

S = ApprovalStatus
RACE_TIMEOUT = 30
DECISION_EVENTS = {"approved", "denied", "expired", "cancelled"}


@dataclass
class Clicks:
    """What each of many simultaneous clicks on one approval got back."""

    won: list[tuple[ApprovalService, Approval]] = field(default_factory=list)
    lost: list[InvalidTransition] = field(default_factory=list)


async def click_all(approval_id: str, clicks: list[tuple[ApprovalService, Approver, bool]]) -> Clicks:
    outcome = Clicks()

    async def click(approvals: ApprovalService, approver: Approver, approve: bool) -> None:
        try:
            decided = await approvals.decide(approval_id, verdict_of(approve), approver=approver, via="api")
        except InvalidTransition as lost:
            outcome.lost.append(lost)
        else:
            outcome.won.append((approvals, decided))

    with anyio.fail_after(RACE_TIMEOUT):
        async with anyio.create_task_group() as group:
            for approvals, approver, approve in clicks:
                group.start_soon(click, approvals, approver, approve)
    return outcome


async def decision_events(approvals: ApprovalService, approval_id: str) -> list[str]:
    return [r.event for r in await approvals.store.audit_trail(approval_id) if r.event in DECISION_EVENTS]


async def completed(listener: RecordingListener, approval_ids: set[str]) -> None:
    """Returns once every approval in `approval_ids` was reported completed by whichever replica released it.

    Any replica's sweep may claim an approved call, so waiting on the deciding replica's `wait()`
    could miss a release finished elsewhere; the channels hear about it from the replica that did it.
    """
    await listener.until(
        lambda: all(listener.updates(approval_id, S.COMPLETED) for approval_id in approval_ids), RACE_TIMEOUT
    )


async def assert_one_winner_released_at_most_once(
    approval_id: str, outcome: Clicks, clicks: int, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    assert len(outcome.won) == 1, [decided.decided_by for _, decided in outcome.won]
    assert len(outcome.lost) == clicks - 1
    [(winning_service, winner)] = outcome.won
    assert all(lost.current.decided_by == winner.decided_by for lost in outcome.lost)
    assert all(lost.current.decided_at == winner.decided_at for lost in outcome.lost)
    assert await decision_events(winning_service, approval_id) == [winner.status.value]
    if winner.status is S.APPROVED:
        await completed(listener, {approval_id})
        assert releaser.calls_for(approval_id) == 1
    else:
        assert winner.status is S.DENIED
        assert releaser.calls_for(approval_id) == 0


async def test_hundred_simultaneous_clicks_have_one_winner(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval(approvers=()))
        clicks = [(approvals, Approver(f"human-{n}"), n % 2 == 0) for n in range(100)]

        outcome = await click_all(approval.id, clicks)

        await assert_one_winner_released_at_most_once(approval.id, outcome, 100, releaser, listener)
        await approvals.sweep()
        assert releaser.calls_for(approval.id) == (1 if outcome.won[0][1].status is S.APPROVED else 0)


async def test_hundred_clicks_on_two_replicas_have_one_winner_and_one_release(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        approval, _ = await replica_a.open(new_approval(approvers=()))
        clicks: list[tuple[ApprovalService, Approver, bool]] = []
        for n in range(50):
            clicks.append((replica_a, Approver(f"a-{n}"), n % 3 != 0))
            clicks.append((replica_b, Approver(f"b-{n}"), n % 3 != 1))

        outcome = await click_all(approval.id, clicks)

        await assert_one_winner_released_at_most_once(approval.id, outcome, 100, releaser, listener)
        # Both replicas sweeping afterwards must not send the call again.
        async with anyio.create_task_group() as group:
            group.start_soon(replica_a.sweep)
            group.start_soon(replica_b.sweep)
        assert releaser.calls_for(approval.id) == (1 if outcome.won[0][1].status is S.APPROVED else 0)


async def test_many_approvals_clicked_on_both_replicas_are_each_released_once(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        opened = [(await replica_a.open(new_approval(arguments={"order": n})))[0] for n in range(10)]
        outcomes: dict[str, Clicks] = {}

        async def race(approval: Approval) -> None:
            outcomes[approval.id] = await click_all(
                approval.id, [(replica_a, Approver("alice"), True), (replica_b, Approver("bob"), True)]
            )

        async with anyio.create_task_group() as group:
            for approval in opened:
                group.start_soon(race, approval)

        for approval in opened:
            await assert_one_winner_released_at_most_once(
                approval.id, outcomes[approval.id], 2, releaser, listener
            )
        assert len(releaser.calls) == 10


async def test_identical_calls_arriving_together_share_one_approval(service: ServiceFactory) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        opened: list[tuple[Approval, bool]] = []

        async def call(approvals: ApprovalService) -> None:
            opened.append(await approvals.open(new_approval()))

        with anyio.fail_after(RACE_TIMEOUT):
            async with anyio.create_task_group() as group:
                for n in range(10):
                    group.start_soon(call, replica_a if n % 2 else replica_b)

        assert len({approval.id for approval, _ in opened}) == 1
        assert sum(1 for _, created in opened if created) == 1


async def test_identical_calls_under_a_new_policy_revision_supersede_the_old_approval_once(
    service: ServiceFactory,
) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        old, _ = await replica_a.open(new_approval(policy_revision="rev-1"))
        opened: list[tuple[Approval, bool]] = []

        async def call(approvals: ApprovalService) -> None:
            opened.append(await approvals.open(new_approval(policy_revision="rev-2")))

        with anyio.fail_after(RACE_TIMEOUT):
            async with anyio.create_task_group() as group:
                for n in range(10):
                    group.start_soon(call, replica_a if n % 2 else replica_b)

        assert len({approval.id for approval, _ in opened}) == 1
        assert sum(1 for _, created in opened if created) == 1
        assert opened[0][0].id != old.id
        trail = [record.event for record in await replica_a.store.audit_trail(old.id)]
        assert trail == ["requested", "cancelled"]


# -- the deadline against the click ------------------------------------------------------------------


async def test_a_click_after_the_deadline_loses_even_before_any_sweep(
    service: ServiceFactory, clock: ManualClock, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval(timeout=timedelta(minutes=5)))
        clock.advance(timedelta(minutes=5, milliseconds=1))

        for approve in (True, False):
            with pytest.raises(InvalidTransition) as late:
                await approvals.decide(
                    approval.id, verdict_of(approve), approver=Approver("alice"), via="slack"
                )
            assert late.value.current.status is S.EXPIRED
            assert late.value.current.decided_by == TIMEOUT_ACTOR
            assert late.value.current.decided_at == clock.now

        assert await approvals.sweep() == 0
        assert releaser.calls == []
        assert await decision_events(approvals, approval.id) == ["expired"]
        await listener.until(lambda: bool(listener.updates(approval.id, S.EXPIRED)))
        await anyio.wait_all_tasks_blocked()
        assert len(listener.updates(approval.id, S.EXPIRED)) == 1


@pytest.mark.parametrize(
    "click_skew",
    [timedelta(milliseconds=-1), timedelta(0)],
    ids=["click-clock-just-before-deadline", "click-clock-at-deadline"],
)
async def test_sweeper_and_clicks_at_the_deadline_settle_on_one_outcome_each(
    service: ServiceFactory,
    clock: ManualClock,
    releaser: CountingReleaser,
    listener: RecordingListener,
    click_skew: timedelta,
) -> None:
    """The clicking replica's clock may trail the sweeping replica's: whoever commits first wins."""
    clicker_clock = ManualClock(clock.now)
    async with service("sweeper") as sweeper, service("clicker", service_clock=clicker_clock) as clicker:
        opened = [
            (await sweeper.open(new_approval(arguments={"order": n}, timeout=timedelta(minutes=1))))[0]
            for n in range(20)
        ]
        deadline = opened[0].expires_at
        clock.now = deadline
        clicker_clock.now = deadline + click_skew
        approved: set[str] = set()
        refused: dict[str, ApprovalStatus] = {}
        swept: list[int] = []

        async def click(approval: Approval) -> None:
            try:
                await clicker.decide(approval.id, Approve(), approver=Approver("alice"), via="slack")
            except InvalidTransition as late:
                refused[approval.id] = late.current.status
            else:
                approved.add(approval.id)

        async def sweep() -> None:
            swept.append(await sweeper.sweep())

        with anyio.fail_after(RACE_TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(sweep)
                for approval in opened:
                    group.start_soon(click, approval)

        assert approved.isdisjoint(refused)
        assert approved | set(refused) == {a.id for a in opened}
        assert set(refused.values()) <= {S.EXPIRED}
        if click_skew == timedelta(0):
            assert approved == set()
        for approval in opened:
            expected = ["approved"] if approval.id in approved else ["expired"]
            assert await decision_events(sweeper, approval.id) == expected
        assert swept[0] <= len(refused)
        await completed(listener, approved)
        for approval_id in approved:
            assert releaser.calls_for(approval_id) == 1
        assert len(releaser.calls) == len(approved)
        await listener.until(
            lambda: sum(1 for a in listener.updated if a.status is S.EXPIRED) == len(refused)
        )
        await anyio.wait_all_tasks_blocked()
        assert sorted(a.id for a in listener.updated if a.status is S.EXPIRED) == sorted(refused)


# -- sweeping ------------------------------------------------------------------------------------------


async def test_two_sweeping_replicas_expire_each_due_approval_exactly_once(
    service: ServiceFactory, clock: ManualClock, listener: RecordingListener
) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        due = [
            (await replica_a.open(new_approval(arguments={"order": n}, timeout=timedelta(minutes=1))))[0]
            for n in range(25)
        ]
        later = [
            (await replica_a.open(new_approval(arguments={"later": n}, timeout=timedelta(hours=1))))[0]
            for n in range(5)
        ]
        clock.advance(timedelta(minutes=1))
        expired_counts: list[int] = []

        async def sweep(approvals: ApprovalService) -> None:
            expired_counts.append(await approvals.sweep())

        with anyio.fail_after(RACE_TIMEOUT):
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(sweep, replica_a)
                    group.start_soon(sweep, replica_b)

        assert sum(expired_counts) >= len(due)
        for approval in due:
            stored = await replica_b.store.get(approval.id)
            assert stored is not None and stored.status is S.EXPIRED
            assert stored.decided_by == TIMEOUT_ACTOR and stored.decided_via == TIMEOUT_ACTOR
            assert await decision_events(replica_b, approval.id) == ["expired"]
        assert {a.id for a in await replica_b.store.list(statuses={S.PENDING})} == {a.id for a in later}

        expired_ids = sorted(a.id for a in due)
        await listener.until(lambda: sum(1 for a in listener.updated if a.status is S.EXPIRED) >= len(due))
        await anyio.wait_all_tasks_blocked()
        assert sorted(a.id for a in listener.updated if a.status is S.EXPIRED) == expired_ids
        assert (await replica_a.store.verify_audit_chain()).ok


@sqlite_only
async def test_concurrent_sweeps_report_each_expiry_once(service: ServiceFactory, clock: ManualClock) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        for n in range(25):
            await replica_a.open(new_approval(arguments={"order": n}, timeout=timedelta(minutes=1)))
        clock.advance(timedelta(minutes=1))
        expired_counts: list[int] = []

        async def sweep(approvals: ApprovalService) -> None:
            expired_counts.append(await approvals.sweep())

        with anyio.fail_after(RACE_TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(sweep, replica_a)
                group.start_soon(sweep, replica_b)

        assert sum(expired_counts) == 25
