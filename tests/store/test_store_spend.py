"""The spend ledger contract, on SQLite, PostgreSQL and Redis: reserve all or nothing, commit,
release, leases that run out, windows, shared counters, and 50 racers for the last of a budget."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from redis.asyncio import Redis

from broker.approvals.spending import Charge, Reservation, SpendLedger, SpendRefusal
from broker.store.pg_spend import PostgresSpendLedger
from broker.store.spend import SqlSpendLedger
from broker.store.sql import SqlApprovalStore

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NOW = 1_700_000_000.0
LEASE = 600.0


@pytest.fixture(params=["sql", "asyncpg", pytest.param("redis", marks=pytest.mark.redis)])
async def ledgers(
    request: pytest.FixtureRequest, open_store: Callable[[], SqlApprovalStore], migrated_url: str
) -> AsyncIterator[Callable[[], SpendLedger]]:
    """Opens ledgers on one shared backend, each with its own connections, like broker replicas.
    The SQL ledgers run over the store's database (SQLite and PostgreSQL, from `database_url`);
    the asyncpg one on PostgreSQL only."""
    if request.param == "sql":
        yield lambda: SqlSpendLedger(open_store(), lease_seconds=LEASE)
        return
    if request.param == "asyncpg":
        if request.node.callspec.params.get("database_url") != "postgresql":
            pytest.skip("the asyncpg ledger is for PostgreSQL")
        async with AsyncExitStack() as stack:
            fast = [
                await stack.enter_async_context(
                    PostgresSpendLedger(migrated_url, lease_seconds=LEASE, pool_size=4)
                )
                for _ in range(3)
            ]
            ready = iter(fast)
            yield lambda: next(ready)
        return
    if request.node.callspec.params.get("database_url") != "sqlite":
        pytest.skip("the Redis ledger runs once, beside SQLite")
    from broker.store.redis_spend import RedisSpendLedger

    prefix = f"test:spend:{secrets.token_hex(4)}:"
    async with AsyncExitStack() as stack:

        def open_one() -> SpendLedger:
            ledger = RedisSpendLedger(REDIS_URL, prefix=prefix, lease_seconds=LEASE)
            opening.append(ledger)
            return ledger

        opening: list[RedisSpendLedger] = []
        # Entered up front: the fixture hands out ledgers from a plain function.
        for _ in range(3):
            await stack.enter_async_context(open_one())
        ready = iter(opening)
        yield lambda: next(ready)
        client = Redis.from_url(REDIS_URL)
        try:
            async for key in client.scan_iter(match=f"{prefix}*"):
                await client.delete(key)
        finally:
            await client.aclose()


@pytest.fixture
def ledger(ledgers: Callable[[], SpendLedger]) -> SpendLedger:
    return ledgers()


def charge(units: int, ceiling: int, *, counter: str = "c|agent:a", since: float = NOW - 3600) -> Charge:
    return Charge(counter=counter, units=units, ceiling=ceiling, since=since)


async def test_reserve_counts_until_the_ceiling_and_refuses_past_it(ledger: SpendLedger) -> None:
    first = await ledger.reserve("r1", [charge(60, 100)], NOW)
    assert isinstance(first, Reservation)
    refused = await ledger.reserve("r2", [charge(41, 100)], NOW + 1)
    assert isinstance(refused, SpendRefusal)
    assert (refused.spent, refused.remaining, refused.oldest) == (60, 40, NOW)
    assert isinstance(await ledger.reserve("r3", [charge(40, 100)], NOW + 2), Reservation)


async def test_release_gives_the_units_back_and_commit_keeps_them(ledger: SpendLedger) -> None:
    held = await ledger.reserve("r1", [charge(70, 100)], NOW)
    assert isinstance(held, Reservation)
    await ledger.release(held)
    kept = await ledger.reserve("r2", [charge(70, 100)], NOW + 1)
    assert isinstance(kept, Reservation)
    await ledger.commit(kept)
    refused = await ledger.reserve("r3", [charge(31, 100)], NOW + 2)
    assert isinstance(refused, SpendRefusal) and refused.spent == 70


async def test_an_abandoned_reservation_stops_counting_when_its_lease_runs_out(ledger: SpendLedger) -> None:
    assert isinstance(await ledger.reserve("r1", [charge(100, 100, since=0)], NOW), Reservation)
    assert isinstance(await ledger.reserve("r2", [charge(1, 100, since=0)], NOW + LEASE - 1), SpendRefusal)
    late = await ledger.reserve("r3", [charge(100, 100, since=0)], NOW + LEASE + 1)
    assert isinstance(late, Reservation)


async def test_a_late_commit_counts_again(ledger: SpendLedger) -> None:
    slow = await ledger.reserve("r1", [charge(50, 100, since=0)], NOW)
    assert isinstance(slow, Reservation)
    await ledger.commit(slow)
    refused = await ledger.reserve("r2", [charge(51, 100, since=0)], NOW + LEASE + 1)
    assert isinstance(refused, SpendRefusal) and refused.spent == 50


async def test_spend_before_the_window_start_does_not_count(ledger: SpendLedger) -> None:
    old = await ledger.reserve("r1", [charge(100, 100, since=NOW - 60)], NOW)
    assert isinstance(old, Reservation)
    await ledger.commit(old)
    assert isinstance(await ledger.reserve("r2", [charge(1, 100, since=NOW - 10)], NOW + 60), SpendRefusal)
    assert isinstance(await ledger.reserve("r3", [charge(100, 100, since=NOW + 1)], NOW + 61), Reservation)


async def test_all_charges_or_none(ledger: SpendLedger) -> None:
    wide = [charge(10, 100, counter="a|global:"), charge(10, 15, counter="b|global:")]
    assert isinstance(await ledger.reserve("r1", wide, NOW), Reservation)
    refused = await ledger.reserve("r2", wide, NOW + 1)
    assert isinstance(refused, SpendRefusal) and refused.charge.counter == "b|global:"
    # The first counter kept nothing of the refused call.
    only_a = await ledger.reserve("r3", [charge(90, 100, counter="a|global:")], NOW + 2)
    assert isinstance(only_a, Reservation)


async def test_limits_sharing_a_counter_check_their_own_ceilings(ledger: SpendLedger) -> None:
    shared = [charge(1, 3, since=NOW - 60), charge(1, 5, since=NOW - 86400)]
    for n in range(3):
        assert isinstance(await ledger.reserve(f"r{n}", shared, NOW + n), Reservation)
    refused = await ledger.reserve("r9", shared, NOW + 3)
    assert isinstance(refused, SpendRefusal) and refused.charge.ceiling == 3 and refused.spent == 3
    # A minute later the short window is empty again but the day holds 3 of 5 (one entry per call).
    assert isinstance(
        await ledger.reserve("r10", [*shared[:1], charge(2, 5, since=0)], NOW + 70), SpendRefusal
    )


async def test_fifty_racers_for_the_last_of_a_budget_never_overspend(
    ledgers: Callable[[], SpendLedger],
) -> None:
    replicas = [ledgers(), ledgers(), ledgers()]
    spent = await replicas[0].reserve("seed", [charge(900, 1000)], NOW)
    assert isinstance(spent, Reservation)
    await replicas[0].commit(spent)
    won: list[Reservation] = []
    go, warmed = anyio.Event(), [0]

    async def race(n: int) -> None:
        ledger = replicas[n % len(replicas)]
        # Opens this racer's connection first, so the 50 reserves below really run at once.
        await ledger.reserve(f"warm-{n}", [charge(1, 10**6, counter=f"warm-{n}")], NOW)
        warmed[0] += 1
        if warmed[0] == 50:
            go.set()
        await go.wait()
        outcome = await ledger.reserve(f"race-{n}", [charge(30, 1000)], NOW + 1)
        if isinstance(outcome, Reservation):
            won.append(outcome)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for n in range(50):
                group.start_soon(race, n)
    assert len(won) == 3  # 900 + 3 * 30 = 990; a fourth would make 1020
    refused = await replicas[1].reserve("after", [charge(11, 1000)], NOW + 2)
    assert isinstance(refused, SpendRefusal) and refused.spent == 990
