"""Creating, reading and listing approvals, and the bookkeeping updates around them."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from broker.approvals.audit import AuditEvent
from broker.approvals.canonical import arguments_hash, request_key
from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import (
    ApprovalConflict,
    ApprovalNotFound,
    InvalidTransition,
    InvalidValue,
    ListPosition,
)
from broker.store.engine import create_store
from broker.store.sql import SqlApprovalStore

from .builders import S, create, entering, new_approval, requested, walk_to
from .conftest import ManualClock

pytestmark = pytest.mark.anyio


async def test_create_returns_the_stored_pending_approval(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    arguments = {"order": "A-17", "note": "café ☕", "lines": [1, 2.5, None, True]}
    approval = await create(store, arguments=arguments, task_id="task-1")

    assert approval.id == "apv-000001"
    assert approval.status is ApprovalStatus.PENDING
    assert approval.version == 1
    assert approval.created_at == clock.now
    assert approval.expires_at == clock.now + timedelta(minutes=5)
    assert approval.arguments == arguments
    assert approval.arguments_hash == arguments_hash(arguments)
    assert approval.request_key == request_key("agent-1", "payments__refund", arguments_hash(arguments))
    assert approval.approvers == ("alice", "bob")
    assert approval.channels == ("slack", "web")
    assert approval.decided_by is None and approval.result is None and approval.result_delivered_at is None
    assert await store.get(approval.id) == approval


async def test_create_records_the_requested_event(store: SqlApprovalStore, clock: ManualClock) -> None:
    approval = await store.create(
        new_approval(), audit=AuditEvent("requested", "agent-1", {"session": "session-1"})
    )

    [record] = await store.audit_trail(approval.id)
    assert (record.seq, record.event, record.actor, record.at) == (1, "requested", "agent-1", clock.now)
    assert record.details == {"session": "session-1"}


async def test_get_unknown_id_is_none(store: SqlApprovalStore) -> None:
    assert await store.get("apv-missing") is None
    assert await store.get_by_task("task-missing") is None


async def test_get_by_task(store: SqlApprovalStore) -> None:
    await create(store, task_id="task-1")
    second = await create(store, task_id="task-2")

    assert await store.get_by_task("task-2") == second


async def test_a_task_id_belongs_to_one_approval(store: SqlApprovalStore) -> None:
    first = await create(store, task_id="task-1")
    second = await create(store)

    with pytest.raises(ApprovalConflict, match=first.id):
        await create(store, task_id="task-1")
    with pytest.raises(ApprovalConflict, match=first.id):
        await store.update_fields(second.id, {"task_id": "task-1"})
    assert await store.get_by_task("task-1") == first


async def test_duplicate_id_is_a_conflict(migrated_url: str, clock: ManualClock) -> None:
    async with create_store(migrated_url, clock=clock, id_factory=lambda: "same-id") as store:
        await create(store)
        with pytest.raises(ApprovalConflict):
            await create(store)
        assert len(await store.list()) == 1


async def test_list_is_newest_first_and_filters(store: SqlApprovalStore, clock: ManualClock) -> None:
    first = await create(store, agent="agent-1", tool="payments__refund")
    clock.advance(timedelta(seconds=1))
    second = await create(store, agent="agent-2", tool="payments__refund")
    clock.advance(timedelta(seconds=1))
    third = await create(store, agent="agent-1", tool="shell__run")
    second = await walk_to(store, second, S.DENIED)

    assert [a.id for a in await store.list()] == [third.id, second.id, first.id]
    assert [a.id for a in await store.list(agent="agent-1")] == [third.id, first.id]
    assert [a.id for a in await store.list(tool="payments__refund")] == [second.id, first.id]
    assert [a.id for a in await store.list(statuses={S.PENDING})] == [third.id, first.id]
    assert [a.id for a in await store.list(statuses=[S.DENIED, S.EXPIRED])] == [second.id]
    assert await store.list(statuses=[]) == []
    assert [a.id for a in await store.list(limit=2)] == [third.id, second.id]
    assert [a.id for a in await store.list(before=third.created_at)] == [second.id, first.id]
    assert [a.id for a in await store.list(agent="agent-1", tool="shell__run")] == [third.id]


async def test_list_breaks_time_ties_by_id(store: SqlApprovalStore) -> None:
    created = [await create(store) for _ in range(3)]

    assert [a.id for a in await store.list()] == [a.id for a in reversed(created)]


async def test_list_pages_through_approvals_created_at_the_same_moment(store: SqlApprovalStore) -> None:
    created = [await create(store, task_id=f"task-{n}" if n % 3 == 0 else None) for n in range(7)]

    seen: list[str] = []
    page = await store.list(limit=3)
    while page:
        seen += [approval.id for approval in page]
        page = await store.list(limit=3, after=ListPosition.of(page[-1]))

    assert seen == [approval.id for approval in reversed(created)]
    tasks = await store.list(with_task=True, limit=2)
    tasks += await store.list(with_task=True, limit=2, after=ListPosition.of(tasks[-1]))
    assert [approval.task_id for approval in tasks] == ["task-6", "task-3", "task-0"]
    with pytest.raises(InvalidValue, match="NUL"):
        await store.list(after=ListPosition(created[0].created_at, "a\x00"))


async def test_list_oldest_first_pages_forward_through_every_match(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    created = []
    for _ in range(4):
        created += [await create(store) for _n in range(3)]  # three sharing each moment
        clock.advance(timedelta(seconds=1))
    created[4] = await walk_to(store, created[4], S.APPROVED)
    created[9] = await walk_to(store, created[9], S.APPROVED)
    created[10] = await walk_to(store, created[10], S.RELEASED)

    seen: list[str] = []
    page = await store.list(limit=5, oldest_first=True)
    while page:
        seen += [approval.id for approval in page]
        page = await store.list(limit=5, after=ListPosition.of(page[-1]), oldest_first=True)
    assert seen == [approval.id for approval in created]
    assert seen == [approval.id for approval in reversed(await store.list(limit=100))]

    approved = await store.list(statuses={S.APPROVED}, limit=1, oldest_first=True)
    assert [a.id for a in approved] == [created[4].id]
    approved += await store.list(
        statuses={S.APPROVED}, limit=1, after=ListPosition.of(approved[-1]), oldest_first=True
    )
    assert [a.id for a in approved] == [created[4].id, created[9].id]
    assert (
        await store.list(
            statuses={S.APPROVED}, limit=1, after=ListPosition.of(approved[-1]), oldest_first=True
        )
        == []
    )
    underway = await store.list(statuses={S.APPROVED, S.RELEASED}, oldest_first=True)
    assert [a.id for a in underway] == [created[4].id, created[9].id, created[10].id]
    earlier = await store.list(before=created[6].created_at, oldest_first=True)
    assert [a.id for a in earlier] == [a.id for a in created[:6]]


@pytest.mark.parametrize(
    "written",
    [
        "0001-01-01T00:00:00+01:00\napv-1",  # before the first moment UTC can hold
        "9999-12-31T23:59:59-01:00\napv-1",  # after the last
        "2026-01-01T00:00:00\napv-1",  # no zone
        "2026-01-01T00:00:00+00:00\na\x00b",
        "2026-01-01T00:00:00+00:00\n",
        "2026-01-01T00:00:00+00:00",
        "yesterday\napv-1",
    ],
)
def test_a_cursor_the_store_did_not_hand_out_is_refused(written: str) -> None:
    token = base64.urlsafe_b64encode(written.encode()).decode()
    with pytest.raises(ValueError, match="not a cursor"):
        ListPosition.from_token(token)
    with pytest.raises(ValueError, match="not a cursor"):
        ListPosition.from_token(written)


def test_a_cursor_round_trips_in_utc(clock: ManualClock) -> None:
    position = ListPosition(clock.now, "apv-000001")
    assert ListPosition.from_token(position.token()) == position


async def test_list_refuses_silly_limits(store: SqlApprovalStore, clock: ManualClock) -> None:
    for limit in (0, -1, 1001):
        with pytest.raises(ValueError, match="limit"):
            await store.list(limit=limit)
        with pytest.raises(ValueError, match="limit"):
            await store.due_for_expiry(clock.now, limit=limit)


async def test_due_for_expiry_returns_overdue_pending_oldest_deadline_first(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    long_wait = await create(store, timeout=timedelta(minutes=10))
    short_wait = await create(store, timeout=timedelta(minutes=1))
    decided = await walk_to(store, await create(store, timeout=timedelta(minutes=1)), S.APPROVED)
    not_yet = await create(store, timeout=timedelta(hours=1))

    assert await store.due_for_expiry(clock.now) == []
    exactly_due = short_wait.expires_at
    assert [a.id for a in await store.due_for_expiry(exactly_due)] == [short_wait.id]
    later = clock.now + timedelta(minutes=30)
    assert [a.id for a in await store.due_for_expiry(later)] == [short_wait.id, long_wait.id]
    assert [a.id for a in await store.due_for_expiry(later, limit=1)] == [short_wait.id]
    assert decided.id not in {a.id for a in await store.due_for_expiry(later)}
    assert not_yet.is_overdue(later) is False


async def test_pending_count(store: SqlApprovalStore) -> None:
    assert await store.pending_count() == 0
    first = await create(store)
    await create(store)
    await walk_to(store, first, S.DENIED)

    assert await store.pending_count() == 1


async def test_find_or_create_attaches_while_the_call_is_open(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    approval = await create(store)
    other_arguments = await create(store, arguments={"order": "B-2"})
    assert other_arguments.request_key != approval.request_key

    # Still open while approved, released and completed-but-undelivered.
    for status in (S.PENDING, S.APPROVED, S.RELEASED, S.COMPLETED):
        if status is not S.PENDING:
            approval = await store.transition(
                approval.id, expected={approval.status}, to=status, audit=entering(status)
            )
        assert await store.find_or_create(new_approval(), audit=requested()) == (approval, False)

    assert await store.mark_delivered(approval.id, clock.now) is True
    clock.advance(timedelta(seconds=1))
    retry, created = await store.find_or_create(new_approval(), audit=requested())
    assert created and retry.request_key == approval.request_key and retry.id != approval.id
    assert await store.find_or_create(new_approval(), audit=requested()) == (retry, False)


async def test_find_or_create_attaches_until_the_outcome_is_delivered(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    first, created = await store.find_or_create(new_approval(), audit=requested())
    assert created and first.status is S.PENDING
    assert [r.event for r in await store.audit_trail(first.id)] == ["requested"]

    again, created = await store.find_or_create(new_approval(), audit=requested("agent-retry"))
    assert (again, created) == (first, False)
    other, created = await store.find_or_create(new_approval(arguments={"order": "B-2"}), audit=requested())
    assert created and other.id != first.id

    denied = await walk_to(store, first, S.DENIED)
    assert await store.find_or_create(new_approval(), audit=requested()) == (denied, False)
    await store.mark_delivered(first.id, clock.now)
    fresh, created = await store.find_or_create(new_approval(), audit=requested())
    assert created and fresh.id not in {first.id, other.id}
    assert [r.actor for r in await store.audit_trail(first.id)] == ["agent-1", "alice"]


async def test_find_or_create_skips_cancelled_and_prefers_the_newest(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    denied = await walk_to(store, await create(store), S.DENIED)
    clock.advance(timedelta(seconds=1))
    newer = await create(store)

    assert await store.find_or_create(new_approval(), audit=requested()) == (newer, False)
    await walk_to(store, newer, S.CANCELLED)
    # The cancelled one is skipped; the denial nobody has collected yet is still open.
    assert await store.find_or_create(new_approval(), audit=requested()) == (
        await store.get(denied.id),
        False,
    )


async def test_update_fields_changes_bookkeeping_only(store: SqlApprovalStore, clock: ManualClock) -> None:
    approval = await create(store)

    updated = await store.update_fields(
        approval.id,
        {"slack_channel": "C123", "slack_ts": "1700000000.0001"},
        audit=AuditEvent("notified", "slack", {"channel": "C123"}),
    )

    assert (updated.slack_channel, updated.slack_ts, updated.version) == ("C123", "1700000000.0001", 2)
    assert updated.status is S.PENDING
    assert [r.event for r in await store.audit_trail(approval.id)] == ["requested", "notified"]
    for forbidden in ("status", "decided_by", "arguments", "version", "id", "expires_at"):
        with pytest.raises(ValueError, match=forbidden):
            await store.update_fields(approval.id, {forbidden: "x"})
    with pytest.raises(ValueError, match="at least one"):
        await store.update_fields(approval.id, {})
    with pytest.raises(ValueError, match="slack_ts"):
        await store.update_fields(approval.id, {"slack_ts": 17})
    with pytest.raises(ApprovalNotFound):
        await store.update_fields("apv-missing", {"slack_ts": "1"})
    assert await store.get(approval.id) == updated


async def test_naive_datetimes_are_refused(store: SqlApprovalStore, clock: ManualClock) -> None:
    approval = await walk_to(store, await create(store), S.DENIED)
    naive = clock.now.replace(tzinfo=None)

    with pytest.raises(ValueError, match="timezone-aware"):
        await store.mark_delivered(approval.id, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.due_for_expiry(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.update_fields(approval.id, {"result_delivered_at": naive})


async def test_mark_delivered(store: SqlApprovalStore, clock: ManualClock) -> None:
    approval = await create(store)
    with pytest.raises(InvalidTransition) as raised:
        await store.mark_delivered(approval.id, clock.now)
    assert raised.value.current.status is S.PENDING

    approval = await walk_to(store, approval, S.FAILED)
    delivered = AuditEvent("delivered", "agent-1")
    assert await store.mark_delivered(approval.id, clock.now, audit=delivered) is True
    assert await store.mark_delivered(approval.id, clock.now + timedelta(seconds=1), audit=delivered) is False

    stored = await store.get(approval.id)
    assert stored is not None
    assert stored.result_delivered_at == clock.now and stored.is_delivered
    assert [r.event for r in await store.audit_trail(approval.id)].count("delivered") == 1
    with pytest.raises(ApprovalNotFound):
        await store.mark_delivered("apv-missing", clock.now)


async def test_append_audit_needs_an_existing_approval(store: SqlApprovalStore) -> None:
    approval = await create(store)

    await store.append_audit(
        AuditEvent("slack_post_failed", "slack", {"error": "channel_not_found"}, approval.id)
    )
    with pytest.raises(ApprovalNotFound):
        await store.append_audit(AuditEvent("notified", "slack", approval_id="apv-missing"))
    with pytest.raises(ValueError, match="approval_id"):
        await store.append_audit(AuditEvent("notified", "slack"))

    trail = await store.audit_trail(approval.id)
    assert [(r.event, r.details) for r in trail] == [
        ("requested", {}),
        ("slack_post_failed", {"error": "channel_not_found"}),
    ]


async def test_audit_event_for_another_approval_is_refused(store: SqlApprovalStore) -> None:
    approval = await create(store)
    other = await create(store)

    with pytest.raises(ValueError, match="recorded for"):
        await store.transition(
            approval.id,
            expected={S.PENDING},
            to=S.APPROVED,
            audit=AuditEvent("approved", "alice", approval_id=other.id),
        )
    assert (await store.get(approval.id)).status is S.PENDING  # type: ignore[union-attr]


async def test_requested_event_defaults(store: SqlApprovalStore) -> None:
    approval = await store.create(new_approval(), audit=requested("agent-9"))

    assert [r.actor for r in await store.audit_trail(approval.id)] == ["agent-9"]


async def test_a_nul_character_is_bad_input_on_every_backend(store: SqlApprovalStore) -> None:
    approval = await create(store)

    assert await store.get("apv\x00") is None
    assert await store.get_by_task("t\x00") is None
    assert await store.list(agent="agent-1\x00") == []
    with pytest.raises(InvalidValue, match="decision_reason contains a NUL character"):
        await store.transition(
            approval.id,
            expected={S.PENDING},
            to=S.DENIED,
            changes={"decision_reason": "no\x00pe"},
            audit=entering(S.DENIED),
        )
    assert await store.get(approval.id) == approval


async def test_the_agents_argument_order_is_kept_beside_the_canonical_arguments(
    store: SqlApprovalStore,
) -> None:
    sent = {"symbol": "BTCUSD", "side": "buy", "quantity": 3, "price": 9}
    approval = await create(store, arguments=sent)
    assert list(approval.arguments) == ["price", "quantity", "side", "symbol"]  # what the hash covers
    assert approval.argument_order == ("symbol", "side", "quantity", "price")
    assert await store.get(approval.id) == approval
