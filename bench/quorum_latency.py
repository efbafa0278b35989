"""Decision-to-release latency of a quorum-2 call, beside a single-approver call, on SQLite and PostgreSQL.

For each of N held calls (distinct arguments) the first approver votes, then the clock starts and
the second approver votes: the time measured runs from that deciding vote being handed to
`ApprovalService.decide` to the releaser receiving the call (the moment the broker hands it to the
upstream connection). The single-approver baseline times one decision the same way. Both run on a
real store (a fresh SQLite file, a fresh PostgreSQL database), in one process, no HTTP in between.

    python bench/quorum_latency.py [--calls 300] [--admin-url URL] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from databases import DEFAULT_ADMIN_URL, fresh_postgres_database

from broker.approvals.model import Approval, Approver, NewApproval
from broker.approvals.service import ApprovalService
from broker.approvals.verdict import Approve
from broker.store.engine import create_store
from broker.store.migrate import upgrade
from broker.store.votes import SqlVoteStore

ALICE, BOB = Approver("alice", frozenset({"desk"})), Approver("bob", frozenset({"desk"}))


class StampingReleaser:
    """The upstream: notes when each call reaches it."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.arrived: dict[str, anyio.Event] = {}

    def can_release(self, approval: Approval) -> bool:
        return True

    async def release(self, approval: Approval) -> dict[str, Any]:
        self.received[approval.id] = time.perf_counter()
        self.arrived.setdefault(approval.id, anyio.Event()).set()
        return {"content": [], "isError": False}


def held(n: int, quorum: int) -> NewApproval:
    return NewApproval(
        agent="bench",
        server="exchange",
        tool="place_order",
        upstream_tool="place_order",
        arguments={"price": n, "quorum": quorum},
        policy_revision="bench",
        rule="rules[0] 'place_order'",
        rule_reason="bench",
        timeout=timedelta(hours=1),
        approvers=("@desk",),
        quorum=quorum,
    )


async def measure(database_url: str, calls: int) -> dict[str, list[float]]:
    await upgrade(database_url)
    store = create_store(database_url)
    releaser = StampingReleaser()
    service = ApprovalService(store, replica="bench", votes=SqlVoteStore(store), sweep_interval=3600)
    service.set_releaser(releaser)
    timings: dict[str, list[float]] = {"quorum 2": [], "single approver": []}
    try:
        async with service.running(sweep=False):
            for n in range(calls):
                for label, quorum in (("quorum 2", 2), ("single approver", 1)):
                    approval, _ = await service.open(held(n, quorum))
                    arrived = releaser.arrived.setdefault(approval.id, anyio.Event())
                    if quorum == 2:
                        await service.decide(approval.id, Approve(), approver=ALICE, via="api")
                    started = time.perf_counter()
                    await service.decide(approval.id, Approve(), approver=BOB, via="api")
                    with anyio.fail_after(30):
                        await arrived.wait()
                    timings[label].append(releaser.received[approval.id] - started)
    finally:
        await store.close()
    return timings


def report(backend: str, timings: dict[str, list[float]]) -> None:
    for label, values in timings.items():
        values.sort()
        p99 = values[max(int(len(values) * 0.99) - 1, 0)]
        print(
            f"{backend:<10} {label:<16} decision -> upstream: p50 {statistics.median(values) * 1000:.2f} ms, "
            f"p99 {p99 * 1000:.2f} ms ({len(values)} calls)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="broker-quorum-") as work:
        report("sqlite", await measure(f"sqlite:///{Path(work) / 'broker.db'}", args.calls))
    if not args.sqlite_only:
        async with fresh_postgres_database(args.admin_url, "bench_quorum") as url:
            report("postgresql", await measure(url, args.calls))


if __name__ == "__main__":
    anyio.run(main)
