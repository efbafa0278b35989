"""Concurrent writers, in one process and across store instances (replicas): exactly one wins."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

import anyio
import pytest

from broker.approvals.audit import AuditEvent
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore, InvalidTransition
from broker.store.sql import SqlApprovalStore

from .builders import S, create, entering, new_approval, requested, walk_to
from .conftest import ManualClock

pytestmark = pytest.mark.anyio

RACE_TIMEOUT = 30


async def race(
    attempts: Sequence[tuple[ApprovalStore, ApprovalStatus, str]], approval_id: str, expected: ApprovalStatus
) -> tuple[list[Approval], list[InvalidTransition]]:
    """Fire every attempt at once and sort the outcomes into winners and losers."""
    winners: list[Approval] = []
    losers: list[InvalidTransition] = []
    start = anyio.Event()

    async def attempt(store: ApprovalStore, to: ApprovalStatus, actor: str) -> None:
        await start.wait()
        try:
            winners.append(
                await store.transition(approval_id, expected={expected}, to=to, audit=entering(to, actor))
            )
        except InvalidTransition as lost:
            losers.append(lost)

    with anyio.fail_after(RACE_TIMEOUT):
        async with anyio.create_task_group() as group:
            for store, to, actor in attempts:
                group.start_soon(attempt, store, to, actor)
            start.set()
    return winners, losers


def assert_single_winner(winners: list[Approval], losers: list[InvalidTransition], total: int) -> Approval:
    assert len(winners) == 1
    assert len(losers) == total - 1
    [winner] = winners
    assert all(lost.current == winner for lost in losers)
    return winner


async def test_hundred_concurrent_decisions_have_one_winner(store: SqlApprovalStore) -> None:
    approval = await create(store)
    attempts = [(store, S.APPROVED if n % 2 else S.DENIED, f"human-{n}") for n in range(100)]

    winners, losers = await race(attempts, approval.id, S.PENDING)

    winner = assert_single_winner(winners, losers, 100)
    assert winner.version == 2
    assert await store.get(approval.id) == winner
    trail = await store.audit_trail(approval.id)
    assert [r.event for r in trail] == ["requested", winner.status.value]
    assert trail[-1].actor == winner.decided_by
    assert (await store.verify_audit_chain()).ok


async def test_replicas_sharing_a_database_have_one_winner(
    open_store: Callable[[], SqlApprovalStore],
) -> None:
    replica_a, replica_b = open_store(), open_store()
    approval = await create(replica_a)
    attempts: list[tuple[ApprovalStore, ApprovalStatus, str]] = []
    for n in range(50):
        attempts.append((replica_a, S.APPROVED, f"a-{n}"))
        attempts.append((replica_b, S.DENIED, f"b-{n}"))

    winners, losers = await race(attempts, approval.id, S.PENDING)

    winner = assert_single_winner(winners, losers, 100)
    assert await replica_b.get(approval.id) == winner
    assert len(await replica_a.audit_trail(approval.id)) == 2
    assert (await replica_b.verify_audit_chain()).ok


async def test_release_is_claimed_by_exactly_one_replica(open_store: Callable[[], SqlApprovalStore]) -> None:
    replicas = [open_store() for _ in range(3)]
    approval = await walk_to(replicas[0], await create(replicas[0]), S.APPROVED)
    attempts: list[tuple[ApprovalStore, ApprovalStatus, str]] = [
        (replicas[n % 3], S.RELEASED, f"replica-{n % 3}") for n in range(30)
    ]

    winners, losers = await race(attempts, approval.id, S.APPROVED)

    winner = assert_single_winner(winners, losers, 30)
    assert winner.released_by in {"replica-0", "replica-1", "replica-2"}


async def test_sweeper_and_approvers_race_without_double_outcomes(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    approver_side, sweeper_side = open_store(), open_store()
    approvals = [await create(approver_side, timeout=timedelta(minutes=1)) for _ in range(20)]
    clock.advance(timedelta(minutes=2))
    outcomes: dict[str, list[ApprovalStatus]] = {a.id: [] for a in approvals}
    # What each loser saw as the current status, keyed by approval and the status it tried for.
    lost_to: dict[tuple[str, ApprovalStatus], ApprovalStatus] = {}

    async def approve(approval_id: str) -> None:
        try:
            await approver_side.transition(
                approval_id, expected={S.PENDING}, to=S.APPROVED, audit=entering(S.APPROVED, "alice")
            )
            outcomes[approval_id].append(S.APPROVED)
        except InvalidTransition as lost:
            lost_to[(approval_id, S.APPROVED)] = lost.current.status

    async def sweep() -> None:
        for due in await sweeper_side.due_for_expiry(clock.now):
            try:
                await sweeper_side.transition(
                    due.id,
                    expected={S.PENDING},
                    to=S.EXPIRED,
                    changes={"decided_via": "timeout"},
                    audit=entering(S.EXPIRED, "timeout"),
                )
                outcomes[due.id].append(S.EXPIRED)
            except InvalidTransition as lost:
                lost_to[(due.id, S.EXPIRED)] = lost.current.status

    with anyio.fail_after(RACE_TIMEOUT):
        async with anyio.create_task_group() as group:
            group.start_soon(sweep)
            for approval in approvals:
                group.start_soon(approve, approval.id)

    for (_, attempted), seen in lost_to.items():
        assert seen is not attempted and seen in {S.APPROVED, S.EXPIRED}
    for approval in approvals:
        [outcome] = outcomes[approval.id]
        stored = await approver_side.get(approval.id)
        assert stored is not None and stored.status is outcome
        assert len(await approver_side.audit_trail(approval.id)) == 2
    assert await sweeper_side.due_for_expiry(clock.now) == []
    assert (await sweeper_side.verify_audit_chain()).ok


async def test_only_one_caller_marks_a_result_delivered(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    replica_a, replica_b = open_store(), open_store()
    approval = await walk_to(replica_a, await create(replica_a), S.COMPLETED)
    results: list[bool] = []

    async def deliver(store: SqlApprovalStore, n: int) -> None:
        results.append(
            await store.mark_delivered(approval.id, clock.now, audit=AuditEvent("delivered", f"w{n}"))
        )

    with anyio.fail_after(RACE_TIMEOUT):
        async with anyio.create_task_group() as group:
            for n in range(40):
                group.start_soon(deliver, replica_a if n % 2 else replica_b, n)

    assert sorted(results) == [False] * 39 + [True]
    assert [r.event for r in await replica_a.audit_trail(approval.id)].count("delivered") == 1


async def test_concurrent_appends_keep_one_valid_chain(
    open_store: Callable[[], SqlApprovalStore],
) -> None:
    replicas = [open_store(), open_store()]
    approvals = [await create(replicas[0]) for _ in range(4)]

    async def notify(store: SqlApprovalStore, approval: Approval, n: int) -> None:
        await store.append_audit(AuditEvent("notified", f"channel-{n}", {"n": n}, approval.id))

    async def decide(store: SqlApprovalStore, approval: Approval) -> None:
        await store.transition(approval.id, expected={S.PENDING}, to=S.DENIED, audit=entering(S.DENIED))

    async def open_new(store: SqlApprovalStore) -> None:
        await create(store)

    with anyio.fail_after(RACE_TIMEOUT):
        async with anyio.create_task_group() as group:
            for n in range(60):
                group.start_soon(notify, replicas[n % 2], approvals[n % 4], n)
            for n, approval in enumerate(approvals):
                group.start_soon(decide, replicas[n % 2], approval)
            for n in range(10):
                group.start_soon(open_new, replicas[n % 2])

    expected_rows = 4 + 60 + 4 + 10
    verification = await replicas[1].verify_audit_chain()
    assert verification.ok, verification
    assert verification.rows_checked == expected_rows
    trail_rows = [r for a in await replicas[0].list(limit=1000) for r in await replicas[0].audit_trail(a.id)]
    assert sorted(r.seq for r in trail_rows) == list(range(1, expected_rows + 1))


async def test_identical_calls_arriving_together_park_one_approval(
    open_store: Callable[[], SqlApprovalStore],
) -> None:
    replicas = [open_store(), open_store()]
    outcomes: list[tuple[Approval, bool]] = []

    async def call(store: SqlApprovalStore) -> None:
        outcomes.append(await store.find_or_create(new_approval(), audit=requested()))

    with anyio.fail_after(RACE_TIMEOUT):
        async with anyio.create_task_group() as group:
            for n in range(40):
                group.start_soon(call, replicas[n % 2])

    assert sum(created for _, created in outcomes) == 1
    assert len({approval.id for approval, _ in outcomes}) == 1
    assert len(await replicas[0].list()) == 1
    assert (await replicas[1].verify_audit_chain()).rows_checked == 1
