"""Rate limiters shared by replicas (PostgreSQL, Redis) count exactly like the in-memory one.

Each "replica" is a limiter instance of its own with its own connections; the clock is
injected, so windows slide without waiting.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from alembic import command
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from broker.policy.decision import RateLimit
from broker.proxy.ratelimit import RateLimiter, RateVerdict, SlidingWindowLimiter
from broker.store.database import build_engine
from broker.store.migrate import alembic_config, current_revision, upgrade
from broker.store.ratelimit import PostgresRateLimiter
from broker.store.redis_ratelimit import RedisRateLimiter
from tests.replicas.conftest import POSTGRES_ADMIN_URL, REDIS_URL, fresh_database

pytestmark = pytest.mark.anyio

KEY = "agent:trader\x00rules[0] 'get_*'"  # the gateway's keys hold a NUL


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


OpenLimiter = Callable[[], Awaitable[RateLimiter]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def open_limiter(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[OpenLimiter]:
    """Opens limiters on one shared backend, one per simulated replica."""
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            shared = SlidingWindowLimiter(clock=clock)

            async def same_process() -> RateLimiter:
                return shared

            yield same_process
            return
        url = ""
        if request.param == "postgresql":
            url = await stack.enter_async_context(fresh_database("test_ratelimit"))
            await upgrade(url)
        prefix = f"test:{secrets.token_hex(4)}:"

        async def open_one() -> RateLimiter:
            if request.param == "postgresql":
                return await stack.enter_async_context(PostgresRateLimiter(url, clock=clock, pool_size=4))
            return await stack.enter_async_context(RedisRateLimiter(REDIS_URL, clock=clock, prefix=prefix))

        yield open_one


async def test_replicas_hitting_one_key_at_once_share_its_quota(open_limiter: OpenLimiter) -> None:
    replicas = [await open_limiter() for _ in range(3)]
    limit = RateLimit(max_calls=7, window_seconds=60)
    verdicts: list[RateVerdict] = []

    async def hit(limiter: RateLimiter) -> None:
        verdicts.append(await limiter.hit(KEY, limit))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            for turn in range(30):
                tasks.start_soon(hit, replicas[turn % 3])
    assert sum(verdict.allowed for verdict in verdicts) == 7
    assert all(verdict.retry_after == 60 for verdict in verdicts if not verdict.allowed)


async def test_the_window_slides_exactly_as_in_memory(open_limiter: OpenLimiter, clock: Clock) -> None:
    first, second = await open_limiter(), await open_limiter()
    limit = RateLimit(max_calls=2, window_seconds=10)
    # (seconds since start, replica, expected verdict)
    script = [
        (0, first, RateVerdict(True)),
        (4, second, RateVerdict(True)),
        (5, first, RateVerdict(False, 5.0)),
        (9, second, RateVerdict(False, 1.0)),
        (10, first, RateVerdict(True)),  # the call at 0 left the window (it ends exactly at 0)
        (11, second, RateVerdict(False, 3.0)),
        (14, first, RateVerdict(True)),
        (30, second, RateVerdict(True)),
        (30, first, RateVerdict(True)),
        (30, second, RateVerdict(False, 10.0)),
    ]
    start = clock.now
    with anyio.fail_after(20):
        for offset, limiter, expected in script:
            clock.now = start + offset
            assert await limiter.hit(KEY, limit) == expected, f"at {offset} s"


async def test_keys_do_not_share_a_quota(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    limit = RateLimit(max_calls=1, window_seconds=60)
    with anyio.fail_after(20):
        assert (await limiter.hit("session-a\x00rule", limit)).allowed
        assert (await limiter.hit("session-b\x00rule", limit)).allowed
        assert (await limiter.hit("session-a\x00other", limit)).allowed
        assert not (await limiter.hit("session-a\x00rule", limit)).allowed


async def test_an_unreachable_redis_refuses_rate_limited_calls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="broker.store.redis_ratelimit")
    with anyio.fail_after(20):
        async with RedisRateLimiter("redis://127.0.0.1:1/0", timeout=0.5) as limiter:
            verdicts = [await limiter.hit(KEY, RateLimit(100, 60)) for _ in range(2)]
    assert verdicts == [RateVerdict.uncounted("the shared rate-limit counters (Redis) are unreachable")] * 2
    assert len([record for record in caplog.records if "unreachable" in record.getMessage()]) == 1


@pytest.mark.postgres
async def test_calls_are_refused_while_the_database_is_gone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="broker.store.ratelimit")
    limit = RateLimit(100, 60)
    with anyio.fail_after(30):
        async with fresh_database("test_ratelimit") as url:
            await upgrade(url)
            async with PostgresRateLimiter(url, timeout=2) as limiter:
                assert (await limiter.hit(KEY, limit)).allowed
                admin = build_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
                try:
                    async with admin.connect() as conn:
                        name = make_url(url).database
                        await conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
                finally:
                    await admin.dispose()
                assert await limiter.hit(KEY, limit) == RateVerdict.uncounted(
                    "the shared rate-limit counters (PostgreSQL) are unreachable"
                )
    assert any("unreachable" in record.getMessage() for record in caplog.records)


async def test_misuse_is_refused_with_clear_errors() -> None:
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisRateLimiter("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        PostgresRateLimiter("sqlite:///broker.db")
    with pytest.raises(RuntimeError, match="async with"):
        await RedisRateLimiter(REDIS_URL).hit(KEY, RateLimit(1, 1))
    with pytest.raises(RuntimeError, match="async with"):
        await PostgresRateLimiter("postgresql://postgres@127.0.0.1/x").hit(KEY, RateLimit(1, 1))


@pytest.mark.postgres
async def test_migration_0002_adds_an_unlogged_counter_table_on_postgresql_and_takes_it_back() -> None:
    async def persistence(url: str) -> str | None:
        engine = build_engine(url)
        try:
            async with engine.connect() as conn:
                found = await conn.exec_driver_sql(
                    "SELECT relpersistence::text FROM pg_class WHERE relname = 'rate_limit_hits' AND relkind = 'r'"
                )
                return found.scalar()
        finally:
            await engine.dispose()

    with anyio.fail_after(30):
        async with fresh_database("test_migration") as url:
            await upgrade(url, revision="0001")
            assert await persistence(url) is None
            await upgrade(url, revision="0002")
            assert await current_revision(url) == "0002"
            assert await persistence(url) == "u"
            await anyio.to_thread.run_sync(command.downgrade, alembic_config(url), "0001")
            assert await persistence(url) is None


async def test_migration_0002_leaves_sqlite_as_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    await upgrade(url, revision="0002")
    assert await current_revision(url) == "0002"
    engine = build_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert "rate_limit_hits" not in tables
