"""The seen-requests contract on SQLite and PostgreSQL: a digest is new exactly once, across
replicas and races, and dead rows are purged a bounded batch at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio
import pytest
from sqlalchemy import select

from broker.approvals.ports import SeenRequests, StoreUnavailable
from broker.store.engine import create_store
from broker.store.seen_requests import SqlSeenRequests
from broker.store.sql import SqlApprovalStore
from broker.store.tables import seen_requests
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


async def rows(store: SqlApprovalStore) -> set[str]:
    async with store.transaction("count") as conn:
        return set((await conn.execute(select(seen_requests.c.digest))).scalars())


async def test_a_digest_is_first_seen_once_on_every_replica(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    one, other = SqlSeenRequests.on(open_store(), clock=clock), SqlSeenRequests.on(open_store(), clock=clock)
    seen: SeenRequests = one  # the port, as the Slack endpoint holds it
    until = clock.now + timedelta(minutes=10)
    with anyio.fail_after(30):
        assert await seen.first_seen(digest("a"), until) is True
        assert await seen.first_seen(digest("a"), until) is False
        assert await other.first_seen(digest("a"), until) is False
        assert await other.first_seen(digest("b"), until) is True
        assert await seen.first_seen(digest("b"), until) is False


async def test_of_fifty_simultaneous_callers_exactly_one_sees_a_digest_first(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    replicas = [SqlSeenRequests.on(open_store(), clock=clock) for _ in range(3)]
    answers: list[bool] = []

    async def insert(n: int) -> None:
        answers.append(
            await replicas[n % len(replicas)].first_seen(digest("raced"), clock.now + timedelta(minutes=10))
        )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            for n in range(50):
                tasks.start_soon(insert, n)
    assert len(answers) == 50
    assert answers.count(True) == 1


async def test_expired_rows_are_purged_a_bounded_batch_per_insert(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    seen = SqlSeenRequests.on(store, clock=clock, purge_batch=3)
    start = clock.now
    hour = timedelta(hours=1)

    def names(*found: str) -> set[str]:
        return {digest(name) for name in found}

    with anyio.fail_after(30):
        for n in range(5):
            assert await seen.first_seen(digest(f"old-{n}"), start + timedelta(minutes=5, seconds=n))
        assert await seen.first_seen(digest("live"), start + hour)
        clock.advance(timedelta(minutes=5, seconds=3))  # old-0..old-2 are dead; old-3 dies at this instant
        assert await seen.first_seen(digest("new-1"), clock.now + hour)
        assert await rows(store) == names("old-3", "old-4", "live", "new-1")

        for n in range(5):
            assert await seen.first_seen(digest(f"brief-{n}"), clock.now + timedelta(minutes=1, seconds=n))
        clock.advance(timedelta(minutes=10))
        # Seven rows are dead now, more than one batch: each insert takes the oldest three.
        assert await seen.first_seen(digest("new-2"), clock.now + hour)
        assert await rows(store) == names(
            "brief-1", "brief-2", "brief-3", "brief-4", "live", "new-1", "new-2"
        )
        assert await seen.first_seen(digest("new-3"), clock.now + hour)
        assert await rows(store) == names("brief-4", "live", "new-1", "new-2", "new-3")
        assert await seen.first_seen(digest("new-4"), clock.now + hour)
        assert await rows(store) == names("live", "new-1", "new-2", "new-3", "new-4")


async def test_bad_digests_are_bugs_and_an_unreachable_database_fails_closed(
    store: SqlApprovalStore, clock: ManualClock, raw_sql: Callable[[str], Awaitable[None]]
) -> None:
    seen = SqlSeenRequests.on(store, clock=clock)
    for bad in ("", "x" * 65, "a\x00b", "é"):
        with pytest.raises(ValueError, match="digest"):
            await seen.first_seen(bad, clock.now)
    with pytest.raises(ValueError, match="purge_batch"):
        SqlSeenRequests.on(store, clock=clock, purge_batch=0)
    await raw_sql("DROP TABLE seen_requests")
    with anyio.fail_after(30), pytest.raises(StoreUnavailable, match="record a seen request"):
        await seen.first_seen(digest("a"), clock.now + timedelta(minutes=1))


async def test_a_store_that_cannot_reach_its_database_fails_closed(clock: ManualClock) -> None:
    unreachable = create_store("postgresql://postgres@127.0.0.1:1/nothing", clock=clock, db_timeout=2)
    try:
        with anyio.fail_after(30), pytest.raises(StoreUnavailable):
            await SqlSeenRequests.on(unreachable, clock=clock).first_seen(digest("a"), clock.now)
    finally:
        await unreachable.close()
