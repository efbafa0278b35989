"""What a spend limit adds to an allowed call: the gateway's spend check (one `reserve` before
forwarding, one `commit` after), on SQLite, PostgreSQL and Redis, at concurrency 1. In process, no
HTTP: everything else an allowed call does is the same with or without limits, so this is the
added cost. The baseline is the same check on a decision without limits (a tuple test). Each call
spends 1 of a budget large enough for all of them, on one counter, so every reserve sums a window
that grows with the run (the worst case a busy agent meets). PostgreSQL runs through the
SQLAlchemy ledger (several round trips) and the asyncpg one the broker uses (one per step), the
latter also as ``spend: {durable: true}`` builds it (a WAL flush per commit), and its two
statements are timed alone, with and without a WAL flush per commit, beside ``SELECT 1``.

    python bench/spend_limit.py [--calls 1000] [--admin-url URL] [--redis-url URL] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from databases import DEFAULT_ADMIN_URL, fresh_postgres_database

from broker.approvals.spending import Reservation, SpendLedger
from broker.policy.loader import load_policy
from broker.proxy.checks.spend import SpendCheck
from broker.store.engine import create_store
from broker.store.migrate import upgrade
from broker.store.notify import asyncpg_dsn
from broker.store.pg_spend import PostgresSpendLedger
from broker.store.spend import SqlSpendLedger

POLICY = """
version: "1"
rules:
  - {tool: plain, action: allow}
  - tool: place_order
    action: allow
    limits: [{sum: "args.quantity * args.price", max: 1000000000, window: 1d}]
"""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(check: SpendCheck, decision: Any, calls: int) -> list[float]:
    arguments = {"quantity": 1, "price": 1}
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        reservation = await check.reserve(decision, agent="bench", session="s", tool="t", arguments=arguments)
        assert reservation is None or isinstance(reservation, Reservation), reservation
        async with check.settled(reservation):
            pass
        samples.append(time.perf_counter() - started)
    return samples


async def measure(
    ledger: SpendLedger, owner: AbstractAsyncContextManager[Any], calls: int
) -> dict[str, float]:
    policy = load_policy(POLICY, source="bench.yaml")
    plain, limited = policy.decide("plain"), policy.decide("place_order")
    async with owner:
        check = SpendCheck(ledger)
        await timed(check, limited, 50)  # warm the pool and the statement caches
        base = await timed(check, plain, calls)
        spend = await timed(check, limited, calls)
    base_p50, spend_p50 = statistics.median(base), statistics.median(spend)
    return {
        "plain p50 ms": base_p50 * 1000,
        "limited p50 ms": spend_p50 * 1000,
        "limited p99 ms": percentile(spend, 0.99) * 1000,
        "added p50 ms": (spend_p50 - base_p50) * 1000,
    }


async def sql(url: str, calls: int) -> dict[str, float]:
    await upgrade(url)
    store = create_store(url)

    class Closing:
        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *exc: object) -> None:
            await store.close()

    return await measure(SqlSpendLedger(store), Closing(), calls)


async def raw_postgres(url: str, calls: int) -> dict[str, float]:
    """The two statements alone on one connection, with and without a WAL flush per commit, beside
    ``SELECT 1``: what the database itself charges, apart from the broker's Python."""
    row: dict[str, float] = {}
    for mode in ("on", "off"):
        conn = await asyncpg.connect(asyncpg_dsn(url), server_settings={"synchronous_commit": mode})
        try:
            samples = []
            for n in range(calls):
                now = time.time()
                started = time.perf_counter()
                await conn.fetchrow(
                    "SELECT * FROM spend_reserve($1, $2, $3, $4, $5, $6, $7)",
                    f"raw-{mode}-{n}",
                    [f"raw-{mode}"],
                    [1],
                    [10**15],
                    [now - 3600.0],
                    now,
                    now + 3600.0,
                )
                await conn.execute(
                    "UPDATE spend_entries SET lease_until = NULL WHERE reservation = $1", f"raw-{mode}-{n}"
                )
                samples.append(time.perf_counter() - started)
            row[f"sync_commit={mode} p50 ms"] = statistics.median(samples) * 1000
            if mode == "off":
                started = time.perf_counter()
                for _ in range(calls):
                    await conn.fetchval("SELECT 1")
                row["SELECT 1 ms"] = (time.perf_counter() - started) / calls * 1000
        finally:
            await conn.close()
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("sqlite", await sql(f"sqlite:///{tmp}/bench.db", args.calls)))
    if not args.sqlite_only:
        async with fresh_postgres_database(args.admin_url, "bench_spend") as url:
            rows.append(("pg sqlalch.", await sql(url, args.calls)))
            fast = PostgresSpendLedger(url)
            rows.append(("pg asyncpg", await measure(fast, fast, args.calls)))
            durable = PostgresSpendLedger(url, durable=True)  # `spend: {durable: true}`
            rows.append(("pg durable", await measure(durable, durable, args.calls)))
            rows.append(("pg raw sql", await raw_postgres(url, args.calls)))
        from broker.store.redis_spend import RedisSpendLedger

        redis = RedisSpendLedger(args.redis_url, prefix=f"bench:spend:{time.time_ns()}:")
        rows.append(("redis", await measure(redis, redis, args.calls)))
    print(f"{args.calls} calls per backend, concurrency 1")
    for name, row in rows:
        print(f"{name:11s} " + "  ".join(f"{key} {value:7.3f}" for key, value in row.items()))


if __name__ == "__main__":
    anyio.run(main)
