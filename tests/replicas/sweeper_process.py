"""One replica's approval sweeper as a process of its own, for test_concurrent_sweeps.py.

    python -m tests.replicas.sweeper_process DATABASE_URL REPLICA_NAME

Prints "ready" once its store answers, waits for one line on stdin (the start signal the test
gives every process at once), sweeps once, lets the channel listeners run, and prints one
JSON line: every change its listeners were told about, as [approval id, status] pairs.
"""

from __future__ import annotations

import json
import sys

import anyio

from broker.approvals.model import Approval
from broker.approvals.service import ApprovalService
from broker.store.engine import create_store


class Recorder:
    """A channel (like Slack) that records what it would have shown."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str]] = []

    async def approval_opened(self, approval: Approval) -> None:
        self.told.append((approval.id, "opened"))

    async def approval_updated(self, approval: Approval) -> None:
        self.told.append((approval.id, approval.status.value))


async def main(url: str, name: str) -> None:
    recorder = Recorder()
    store = create_store(url)
    service = ApprovalService(store, replica=name)
    service.add_listener(recorder)
    async with store, service.running(sweep=False):
        await store.pending_count()
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        await service.sweep()
        # Listener calls run as tasks of the service; let them finish before leaving.
        await anyio.wait_all_tasks_blocked()
    print(json.dumps(recorder.told), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
