"""The hash-chained audit log: what it records, and that edits and deletions are found."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from broker.approvals.audit import AuditEvent, ChainProblem
from broker.approvals.canonical import GENESIS_HASH, audit_hash
from broker.store.sql import SqlApprovalStore

from .builders import S, create, entering, walk_to
from .conftest import ManualClock

pytestmark = pytest.mark.anyio

RawSql = Callable[[str], Awaitable[None]]


async def build_history(store: SqlApprovalStore, clock: ManualClock) -> None:
    """Six audit rows over two approvals."""
    first = await create(store)
    clock.advance(timedelta(seconds=1))
    await store.append_audit(AuditEvent("notified", "slack", {"channel": "C1", "ts": "1.2"}, first.id))
    clock.advance(timedelta(seconds=1))
    await walk_to(store, first, S.RELEASED)  # approved, released
    second = await create(store, arguments={"order": "Ω-9"})
    await walk_to(store, second, S.CANCELLED)


async def test_empty_chain_is_valid(store: SqlApprovalStore) -> None:
    verification = await store.verify_audit_chain()

    assert verification.ok
    assert (verification.rows_checked, verification.head_hash) == (0, GENESIS_HASH)


async def test_chain_links_every_event(store: SqlApprovalStore, clock: ManualClock) -> None:
    await build_history(store, clock)

    records = [r for a in reversed(await store.list()) for r in await store.audit_trail(a.id)]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.event for r in records] == [
        "requested",
        "notified",
        "approved",
        "released",
        "requested",
        "cancelled",
    ]
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    for record in records:
        assert record.hash == audit_hash(
            record.prev_hash,
            seq=record.seq,
            approval_id=record.approval_id,
            event=record.event,
            actor=record.actor,
            at=record.at,
            details=record.details,
        )
    verification = await store.verify_audit_chain()
    assert verification.ok
    assert (verification.rows_checked, verification.head_hash) == (6, records[-1].hash)


async def test_modified_row_is_reported(store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql) -> None:
    await build_history(store, clock)

    await raw_sql("""UPDATE audit_events SET details = '{"channel":"C666","ts":"1.2"}' WHERE seq = 2""")

    verification = await store.verify_audit_chain()
    assert not verification.ok
    assert (verification.broken_seq, verification.problem) == (2, ChainProblem.HASH_MISMATCH)
    assert verification.rows_checked == 1
    assert "seq 2" in (verification.explanation or "")


async def test_modified_actor_is_reported(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql
) -> None:
    await build_history(store, clock)

    await raw_sql("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")

    verification = await store.verify_audit_chain()
    assert (verification.broken_seq, verification.problem) == (3, ChainProblem.HASH_MISMATCH)


async def test_rehashed_row_breaks_the_next_link(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql
) -> None:
    await build_history(store, clock)
    [row] = [r for r in await store.audit_trail("apv-000001") if r.seq == 3]
    forged = audit_hash(
        row.prev_hash,
        seq=3,
        approval_id=row.approval_id,
        event=row.event,
        actor="mallory",
        at=row.at,
        details={},
    )

    await raw_sql(f"UPDATE audit_events SET actor = 'mallory', hash = '{forged}' WHERE seq = 3")

    verification = await store.verify_audit_chain()
    assert (verification.broken_seq, verification.problem) == (4, ChainProblem.PREV_HASH_MISMATCH)
    assert verification.rows_checked == 3


@pytest.mark.parametrize("seq", [1, 4])
async def test_deleted_row_is_reported(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql, seq: int
) -> None:
    await build_history(store, clock)

    await raw_sql(f"DELETE FROM audit_events WHERE seq = {seq}")

    verification = await store.verify_audit_chain()
    assert (verification.broken_seq, verification.problem) == (seq, ChainProblem.MISSING_ROW)
    assert verification.rows_checked == seq - 1


async def test_deleted_and_renumbered_rows_are_reported(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql
) -> None:
    await build_history(store, clock)

    await raw_sql("DELETE FROM audit_events WHERE seq = 4")
    for seq in (5, 6):
        await raw_sql(f"UPDATE audit_events SET seq = {seq - 1} WHERE seq = {seq}")

    verification = await store.verify_audit_chain()
    assert (verification.broken_seq, verification.problem) == (4, ChainProblem.PREV_HASH_MISMATCH)


async def test_row_edited_into_invalid_json_is_reported(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql
) -> None:
    await build_history(store, clock)

    await raw_sql("UPDATE audit_events SET details = 'not json' WHERE seq = 5")

    verification = await store.verify_audit_chain()
    assert (verification.broken_seq, verification.problem) == (5, ChainProblem.UNREADABLE_ROW)
    with pytest.raises(ValueError, match="audit row 5"):
        await store.audit_trail("apv-000002")


async def test_timestamp_edit_is_reported(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql
) -> None:
    await build_history(store, clock)
    [row] = [r for r in await store.audit_trail("apv-000001") if r.seq == 2]
    earlier = row.at - timedelta(hours=1)
    literal = earlier.strftime("%Y-%m-%d %H:%M:%S.%f")
    if store_is_postgres(store):
        literal += "+00"

    await raw_sql(f"UPDATE audit_events SET at = '{literal}' WHERE seq = 2")

    verification = await store.verify_audit_chain()
    assert (verification.broken_seq, verification.problem) == (2, ChainProblem.HASH_MISMATCH)


async def test_verification_walks_past_one_batch(store: SqlApprovalStore, raw_sql: RawSql) -> None:
    approval = await create(store)
    for n in range(1, 30):
        await store.append_audit(AuditEvent("notified", "web", {"n": n}, approval.id))

    assert (await store.verify_audit_chain(batch_size=7)).rows_checked == 30
    await raw_sql("""UPDATE audit_events SET details = '{"n":0}' WHERE seq = 22""")
    verification = await store.verify_audit_chain(batch_size=7)
    assert (verification.broken_seq, verification.rows_checked) == (22, 21)
    with pytest.raises(ValueError, match="batch_size"):
        await store.verify_audit_chain(batch_size=0)


async def test_audit_records_transition_details(store: SqlApprovalStore) -> None:
    approval = await create(store)
    await store.transition(
        approval.id,
        expected={S.PENDING},
        to=S.APPROVED,
        audit=entering(S.APPROVED, "alice", via="slack", note="née ✓"),
    )

    last = (await store.audit_trail(approval.id))[-1]
    assert (last.event, last.actor, last.details) == ("approved", "alice", {"via": "slack", "note": "née ✓"})


def store_is_postgres(store: SqlApprovalStore) -> bool:
    return "postgres" in repr(store._engine.url)


async def test_deleting_the_newest_rows_is_reported(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: RawSql
) -> None:
    await build_history(store, clock)
    intact = await store.verify_audit_chain()
    assert (intact.ok, intact.head_seq) == (True, 6)

    # The last approval's "cancelled" event: the chain alone stays consistent.
    await raw_sql("DELETE FROM audit_events WHERE seq = 6")

    verification = await store.verify_audit_chain()
    assert (verification.ok, verification.problem) == (False, ChainProblem.MISSING_EVENTS)
    assert "is cancelled but its cancelled event(s) are missing" in (verification.explanation or "")

    # Both of its rows and the approval itself: only the head recorded earlier tells.
    await raw_sql("DELETE FROM audit_events WHERE seq = 5")
    await raw_sql("DELETE FROM approvals WHERE id NOT IN (SELECT approval_id FROM audit_events)")
    assert (await store.verify_audit_chain()).ok
    anchored = await store.verify_audit_chain(expected_head=(intact.head_seq, intact.head_hash))
    assert (anchored.ok, anchored.problem, anchored.broken_seq) == (False, ChainProblem.HEAD_MISSING, 6)
