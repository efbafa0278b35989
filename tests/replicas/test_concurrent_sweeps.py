"""Sweepers of several processes racing over the same overdue approvals: one expiry each, told once.

Every replica runs the sweeper. The store's compare-and-set lets one of them expire each
approval, and only the process whose transition won calls its channel listeners (Slack
message updates, web inbox pushes), so the humans see each timeout exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.store.engine import create_store
from broker.store.migrate import upgrade
from tests.replicas.cluster import REPO
from tests.store.builders import new_approval

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

PROCESSES = 4
OVERDUE = 60


async def line_from(process: Process, reader: BufferedByteReceiveStream) -> str:
    try:
        return (await reader.receive_until(b"\n", 1_000_000)).decode()
    except anyio.IncompleteRead:
        raise AssertionError(f"sweeper process exited with {await process.wait()}") from None


async def test_sweepers_in_several_processes_expire_each_approval_once_and_tell_the_channels_once(
    postgres_url: str,
) -> None:
    await upgrade(postgres_url)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    async with create_store(postgres_url, clock=lambda: an_hour_ago) as store:
        overdue = [
            await store.create(
                new_approval(arguments={"order": f"A-{number}"}, timeout=timedelta(minutes=1)),
                audit=AuditEvent(AuditEventKind.REQUESTED, "agent-1"),
            )
            for number in range(OVERDUE)
        ]

    with anyio.fail_after(45):
        processes = [
            await anyio.open_process(
                [sys.executable, "-m", "tests.replicas.sweeper_process", postgres_url, f"replica-{number}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=REPO,
            )
            for number in range(PROCESSES)
        ]
        try:
            readers = [BufferedByteReceiveStream(process.stdout) for process in processes if process.stdout]
            for process, reader in zip(processes, readers, strict=True):
                assert (await line_from(process, reader)).strip() == "ready"
            for process in processes:
                assert process.stdin is not None
                await process.stdin.send(b"go\n")  # as close to together as four processes can start
            told = [
                json.loads(await line_from(process, reader))
                for process, reader in zip(processes, readers, strict=True)
            ]
            for process in processes:
                assert await process.wait() == 0
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()

    everything = [(approval_id, status) for per_process in told for approval_id, status in per_process]
    assert Counter(everything) == Counter({(approval.id, "expired"): 1 for approval in overdue})
    async with create_store(postgres_url) as store:
        for approval in overdue:
            events = [record.event for record in await store.audit_trail(approval.id)]
            assert events == ["requested", "expired"]
        assert (await store.verify_audit_chain()).ok
