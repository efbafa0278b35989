"""StoreHealth: down from the first failure anyone sees, up again only through a probe started after it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from broker.approvals.health import StoreHealth
from broker.approvals.ports import StoreUnavailable
from broker.store.engine import create_store
from broker.store.migrate import upgrade

from .conftest import ManualClock

pytestmark = pytest.mark.anyio


@dataclass
class Database:
    """A probe target whose answer the test decides; `gate`, when set, holds each probe until it opens."""

    reachable: bool = True
    probes: int = 0
    gate: anyio.Event | None = None
    started: anyio.Event = field(default_factory=anyio.Event)

    async def probe(self) -> None:
        self.probes += 1
        self.started.set()
        self.started = anyio.Event()
        if self.gate is not None:
            await self.gate.wait()
        if not self.reachable:
            raise StoreUnavailable("connection refused")


async def test_a_failure_refuses_at_once_and_one_probe_shared_by_every_caller_brings_it_back() -> None:
    database = Database(gate=anyio.Event())
    health = StoreHealth(database.probe)
    health.failed("connection reset")
    assert not health.up and health.reason == "connection reset"

    answers: list[bool] = []

    async def call() -> None:
        answers.append(await health.recheck())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            for _ in range(50):
                tasks.start_soon(call)
            await database.started.wait()
            assert database.gate is not None
            database.gate.set()
    assert answers == [True] * 50
    assert database.probes == 1
    assert health.up


async def test_a_probe_that_overlaps_a_failure_does_not_count() -> None:
    database = Database(gate=anyio.Event())
    health = StoreHealth(database.probe)
    health.failed("first")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(health.probe)
            await database.started.wait()
            health.failed("seen by someone else while the probe ran")
            assert database.gate is not None
            database.gate.set()
    # The answer predates the newer failure, so a second probe was made before coming back up.
    assert database.probes == 2
    assert health.up


async def test_a_failed_probe_keeps_refusing_and_the_prober_retries_until_the_store_is_back() -> None:
    database = Database(reachable=False)
    health = StoreHealth(database.probe, up_interval=3600, down_interval=0.01)
    health.failed("connection refused")
    assert not await health.recheck()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            await tasks.start(health.run)
            while database.probes < 3:
                await database.started.wait()
            assert not health.up
            database.reachable = True
            await health.wait(up=True)
            tasks.cancel_scope.cancel()


async def test_a_caller_waits_for_a_hung_probe_no_longer_than_the_probe_timeout() -> None:
    database = Database(gate=anyio.Event())
    health = StoreHealth(database.probe, up_interval=3600, probe_timeout=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            await tasks.start(health.run)
            health.failed("connection reset")
            assert not await health.recheck()  # the probe is still hanging in the background
            assert not await health.recheck()
            assert database.probes == 1
            assert database.gate is not None
            database.gate.set()
            await health.wait(up=True)
            tasks.cancel_scope.cancel()


async def test_the_store_reports_its_failures_and_its_probe_finds_a_sqlite_file_taken_away(
    tmp_path: Path, clock: ManualClock
) -> None:
    folder = tmp_path / "db"
    url = f"sqlite:///{folder / 'approvals.db'}"
    folder.mkdir()
    await upgrade(url)
    async with create_store(url, clock=clock) as store:
        health = StoreHealth(store.probe)
        store.report_failures_to(health.failed)
        assert await health.probe()
        assert await store.pending_count() == 0  # the pool now holds an open connection

        folder.rename(tmp_path / "elsewhere")
        folder.mkdir()
        # The pooled connection still reads the old file; only opening the path afresh notices.
        assert await store.pending_count() == 0 and health.up
        assert not await health.probe()
        assert "cannot open the SQLite database" in health.reason

        folder.rmdir()
        (tmp_path / "elsewhere").rename(folder)
        assert await health.recheck()

    async with create_store(f"sqlite:///{tmp_path / 'no-such-directory' / 'x.db'}", clock=clock) as store:
        health = StoreHealth(store.probe)
        store.report_failures_to(health.failed)
        with pytest.raises(StoreUnavailable):
            await store.get("apv-1")
        assert not health.up  # nobody had to tell it


async def test_the_probe_answers_on_both_backends(migrated_url: str, clock: ManualClock) -> None:
    async with create_store(migrated_url, clock=clock) as store:
        health = StoreHealth(store.probe)
        health.failed("pretend")
        assert await health.recheck()
