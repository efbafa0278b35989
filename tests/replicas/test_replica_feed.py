"""LISTEN/NOTIFY between approval services on one PostgreSQL database (broker.store.notify).

Every service here runs without its sweeper, so news can only travel by notification: a
waiter that is not woken by one would sit out its 30 s wait, past every test's deadline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import pytest

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.service import ApprovalService, Approver
from broker.approvals.verdict import Deny
from broker.store.engine import create_store
from broker.store.migrate import upgrade
from broker.store.notify import CHANNEL, ApprovalChange, ReplicaFeed, asyncpg_dsn
from tests.approvals.conftest import RecordingListener
from tests.store.builders import new_approval

pytestmark = [pytest.mark.anyio]

ALICE = Approver("alice")
RESULT = {"content": [{"type": "text", "text": "done"}], "isError": False}


@dataclass
class RecordingReleaser:
    released: list[str] = field(default_factory=list)

    def can_release(self, approval: Approval) -> bool:
        return True

    async def release(self, approval: Approval) -> dict[str, Any]:
        self.released.append(approval.id)
        return RESULT


@dataclass
class Replica:
    service: ApprovalService
    feed: ReplicaFeed
    releaser: RecordingReleaser


@pytest.fixture
async def url(postgres_url: str) -> str:
    await upgrade(postgres_url)
    return postgres_url


@asynccontextmanager
async def replica(
    url: str, name: str, *, sleep: Callable[[float], Awaitable[None]] = anyio.sleep
) -> AsyncIterator[Replica]:
    store = create_store(url)
    service = ApprovalService(store, replica=name)
    releaser = RecordingReleaser()
    service.set_releaser(releaser)
    feed = ReplicaFeed(url, replica=name, backoff=(0.05, 0.2), sleep=sleep)
    service.add_listener(feed)
    async with store, service.running(sweep=False), anyio.create_task_group() as tasks:
        tasks.start_soon(feed.run, service)
        with anyio.fail_after(10):
            await feed.wait_connected()
        yield Replica(service, feed, releaser)
        tasks.cancel_scope.cancel()


async def notify(url: str, payload: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    finally:
        await connection.close()


async def terminate_feed(url: str, feed: ReplicaFeed) -> None:
    """What a database restart or a dropped TCP connection does to the feed's connection."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        ended = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            f"broker-feed {feed.replica}",
        )
        assert ended == 1
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_a_decision_on_one_replica_wakes_the_agent_waiting_on_another(url: str) -> None:
    async with replica(url, "a") as a, replica(url, "b") as b:
        held, _ = await b.service.open(new_approval())
        outcome: dict[str, Approval] = {}

        async def agent() -> None:
            outcome["approval"] = await b.service.wait(held.id, 30)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(agent)
                await anyio.wait_all_tasks_blocked()
                await a.service.decide(held.id, Deny("no"), approver=ALICE, via="api")
        assert outcome["approval"].status is ApprovalStatus.DENIED
        assert outcome["approval"].decided_by == "alice"


@pytest.mark.postgres
async def test_an_approval_is_released_by_the_replica_whose_agent_waits_and_only_once(url: str) -> None:
    async with replica(url, "holder") as holder, replica(url, "bystander") as bystander:
        held, _ = await holder.service.open(new_approval())
        outcome: dict[str, Approval] = {}

        async def agent() -> None:
            approval = await holder.service.wait(held.id, 30)
            while not approval.is_terminal:
                approval = await holder.service.wait(held.id, 30)
            outcome["approval"] = approval

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(agent)
                await anyio.wait_all_tasks_blocked()
                # Approved by a process that releases nothing itself (as a bare store client would),
                # announced the way every replica announces its changes.
                store = create_store(url)
                async with store:
                    approved = await store.transition(
                        held.id,
                        expected={ApprovalStatus.PENDING},
                        to=ApprovalStatus.APPROVED,
                        audit=AuditEvent(AuditEventKind.APPROVED, "alice"),
                    )
                await notify(url, ApprovalChange(approved.id, approved.status, "elsewhere").payload())
        assert outcome["approval"].status is ApprovalStatus.COMPLETED
        assert holder.releaser.released == [held.id]
        assert bystander.releaser.released == []


@pytest.mark.postgres
async def test_after_a_lost_connection_the_feed_reconnects_and_waiters_catch_up(url: str) -> None:
    gate = anyio.Event()

    async def held_back_sleep(seconds: float) -> None:
        await gate.wait()  # the test decides when the feed may reconnect

    async with replica(url, "a") as a, replica(url, "b", sleep=held_back_sleep) as b:
        held, _ = await b.service.open(new_approval())
        outcome: dict[str, Approval] = {}

        async def agent() -> None:
            outcome["approval"] = await b.service.wait(held.id, 30)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(agent)
                await anyio.wait_all_tasks_blocked()
                await terminate_feed(url, b.feed)
                await b.feed.wait_connected(False)
                # Announced while b is not listening: PostgreSQL does not keep it for b.
                await a.service.decide(held.id, Deny(), approver=ALICE, via="api")
                await anyio.wait_all_tasks_blocked()
                assert "approval" not in outcome
                gate.set()
                await b.feed.wait_connected()
        assert outcome["approval"].status is ApprovalStatus.DENIED
        assert b.feed.connections == 2

        # And news flows again on the new connection.
        again, _ = await b.service.open(new_approval(arguments={"order": "B-2"}))
        later: dict[str, Approval] = {}

        async def next_agent() -> None:
            later["approval"] = await b.service.wait(again.id, 30)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(next_agent)
                await anyio.wait_all_tasks_blocked()
                await a.service.decide(again.id, Deny(), approver=ALICE, via="api")
        assert later["approval"].status is ApprovalStatus.DENIED


@pytest.mark.postgres
async def test_unreadable_notifications_are_logged_and_skipped(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.store.notify")
    async with replica(url, "a") as a:
        held, _ = await a.service.open(new_approval())
        outcome: dict[str, Approval] = {}

        async def agent() -> None:
            outcome["approval"] = await a.service.wait(held.id, 30)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(agent)
                await anyio.wait_all_tasks_blocked()
                for garbage in (
                    "not json",
                    "[1, 2]",
                    '{"id": "x"}',
                    '{"id": "x", "status": "odd", "replica": "z"}',
                ):
                    await notify(url, garbage)
                store = create_store(url)
                async with store:
                    await store.transition(
                        held.id,
                        expected={ApprovalStatus.PENDING},
                        to=ApprovalStatus.DENIED,
                        audit=AuditEvent(AuditEventKind.DENIED, "bob"),
                    )
                await notify(url, ApprovalChange(held.id, ApprovalStatus.DENIED, "elsewhere").payload())
        assert outcome["approval"].status is ApprovalStatus.DENIED
        skipped = [
            record.getMessage()
            for record in caplog.records
            if "ignoring a notification" in record.getMessage()
        ]
        assert len(skipped) == 4, skipped
        assert a.feed.connections == 1


def test_a_change_survives_the_round_trip_through_its_payload() -> None:
    change = ApprovalChange("01HZX", ApprovalStatus.APPROVED, "host-1-2")
    assert ApprovalChange.parse(change.payload()) == change
    with pytest.raises(ValueError, match="not JSON"):
        ApprovalChange.parse("{")
    with pytest.raises(ValueError, match="unknown status"):
        ApprovalChange.parse('{"id": "a", "status": "maybe", "replica": "r"}')


def test_only_postgresql_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        ReplicaFeed("sqlite:///x.db", replica="r")
    assert (
        asyncpg_dsn("postgresql+asyncpg://u:p%40ss@db:5433/broker") == "postgresql://u:p%40ss@db:5433/broker"
    )


@pytest.mark.postgres
async def test_views_hear_what_other_replicas_change_and_acting_channels_do_not(url: str) -> None:
    async with replica(url, "a") as a, replica(url, "b") as b:
        view, channel = RecordingListener(), RecordingListener()
        b.service.add_listener(view, hears_other_replicas=True)
        b.service.add_listener(channel)

        with anyio.fail_after(10):
            held, _ = await a.service.open(new_approval())
            await view.until(lambda: bool(view.opened))
            await a.service.decide(held.id, Deny("no"), approver=ALICE, via="api")
            await view.until(lambda: bool(view.updates(held.id, ApprovalStatus.DENIED)))

        assert [approval.id for approval in view.opened] == [held.id]
        assert channel.opened == [] and channel.updated == []
