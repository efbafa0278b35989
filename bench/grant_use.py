"""What a time-boxed grant costs a held call: one `GrantStore.use` (the compare-and-increment the
gateway makes before it would hold the call), on SQLite and PostgreSQL, beside one `store.get`
(a plain indexed read) as the round-trip baseline. In process, no HTTP; a grant with room for
every call, so each use succeeds.

    python bench/grant_use.py [--calls 1000] [--admin-url URL] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from databases import DEFAULT_ADMIN_URL, fresh_postgres_database

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.clock import utc_now
from broker.approvals.grants import GrantRequest, GrantScope, grant_for
from broker.approvals.model import NewApproval, Vote
from broker.approvals.quorum import Requirement, tally
from broker.store.engine import create_store
from broker.store.grants import SqlGrantStore
from broker.store.migrate import upgrade
from broker.store.votes import SqlVoteStore


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(url: str, calls: int) -> tuple[list[float], list[float]]:
    await upgrade(url)
    store = create_store(url)
    try:
        new = NewApproval(
            agent="bench",
            server="exchange",
            tool="place_order",
            upstream_tool="place_order",
            arguments={"quantity": 1},
            policy_revision="rev",
            rule="rules[0]",
            rule_reason="bench",
            timeout=timedelta(minutes=5),
        )
        approval = await store.create(new, audit=AuditEvent(AuditEventKind.REQUESTED, "bench"))
        request = GrantRequest(3600, GrantScope.MATCHING, calls + 1)
        await SqlVoteStore(store).cast(
            approval.id,
            Vote("alice", frozenset(), "bench", utc_now()),
            reason=None,
            audit=AuditEvent(AuditEventKind.VOTED, "alice"),
            tally=partial(tally, requirement=Requirement(1)),
            grant=request,
            make_grant=lambda row, result, _: grant_for(row, request, result.counted, utc_now()),
        )
        grants = SqlGrantStore(store)
        uses: list[float] = []
        reads: list[float] = []
        for n in range(calls):
            started = time.perf_counter()
            used = await grants.use(
                agent="bench",
                server="exchange",
                tool="place_order",
                rule="rules[0]",
                policy_revision="rev",
                arguments_hash=f"{n:064x}",
                request_key=f"{n:064x}",
                now=utc_now(),
            )
            uses.append((time.perf_counter() - started) * 1000)
            assert used is not None
            started = time.perf_counter()
            await store.get(approval.id)
            reads.append((time.perf_counter() - started) * 1000)
        return uses, reads
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    print(f"{'backend':<11} {'operation':<22} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>8}")
    with tempfile.TemporaryDirectory() as work:
        results = {"sqlite": await measure(f"sqlite:///{Path(work) / 'grants.db'}", args.calls)}
    if not args.sqlite_only:
        async with fresh_postgres_database(args.admin_url, "bench_grants") as url:
            results["postgresql"] = await measure(url, args.calls)
    for backend, (uses, reads) in results.items():
        for name, samples in (("grant use (UPDATE)", uses), ("approval get (SELECT)", reads)):
            print(
                f"{backend:<11} {name:<22} {statistics.median(samples):>7.2f} "
                f"{percentile(samples, 0.99):>7.2f} {statistics.fmean(samples):>8.2f}"
            )


if __name__ == "__main__":
    anyio.run(main)
