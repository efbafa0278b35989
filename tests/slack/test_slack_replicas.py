"""Replicas on one database sharing one Slack: one message per approval, and it shows the latest
state whichever replica posted it, whichever decided, and whichever stopped halfway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from broker.approvals import Approval, ApprovalStatus, NewApproval
from broker.approvals.approvers import ApproverDirectory
from broker.approvals.audit import AuditEvent
from broker.approvals.service import ApprovalService, Approver
from broker.approvals.verdict import Deny
from broker.channels.slack import SlackChannel
from broker.channels.slack.notifier import SlackNotifier
from broker.store.engine import create_store
from broker.store.migrate import upgrade
from broker.store.seen_requests import SqlSeenRequests
from broker.store.sql import SqlApprovalStore
from tests.replicas.conftest import fresh_database
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import BIG_ORDER, slack_approvers, slack_settings
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'replicas.db'}"
        await upgrade(url)
        yield url
        return
    async with fresh_database("test_slack_replicas") as url:
        await upgrade(url)
        yield url


class Ticks:
    """The reconciler's sleep between passes: it sleeps until the test ticks."""

    def __init__(self) -> None:
        self.sleeps = 0
        self._tick = anyio.Event()
        self._asked = anyio.Event()

    async def __call__(self, delay: float) -> None:
        self.sleeps += 1
        self._asked.set()
        self._asked = anyio.Event()
        await self._tick.wait()

    async def passes(self, count: int) -> None:
        """Returns once `count` passes are over (the loop sleeps after each)."""
        while self.sleeps < count:
            await self._asked.wait()

    async def tick(self) -> None:
        """Lets the reconciler run one more pass, and returns when it is over."""
        done = self.sleeps + 1
        self._tick.set()
        self._tick = anyio.Event()
        await self.passes(done)


class Returned:
    """The notifier as the service's listener, telling the test when each call to it returned
    (the notifier does an approval's work inside the call that announced the change)."""

    def __init__(self, notifier: SlackNotifier) -> None:
        self._notifier = notifier
        self._send: MemoryObjectSendStream[str]
        self._receive: MemoryObjectReceiveStream[str]
        self._send, self._receive = anyio.create_memory_object_stream[str](100)

    async def approval_opened(self, approval: Approval) -> None:
        await self._notifier.approval_opened(approval)
        await self._send.send(approval.id)

    async def approval_updated(self, approval: Approval) -> None:
        await self._notifier.approval_updated(approval)
        await self._send.send(approval.id)

    async def next(self) -> str:
        return await self._receive.receive()


@dataclass
class Replica:
    store: SqlApprovalStore
    service: ApprovalService
    notifier: SlackNotifier
    returned: Returned
    ticks: Ticks


@asynccontextmanager
async def replica(
    url: str, fake: FakeSlack, name: str, clock: ManualClock, *, claim_lease: timedelta = timedelta(minutes=2)
) -> AsyncIterator[Replica]:
    store = create_store(url, clock=clock, max_connections=4)
    service = ApprovalService(store, replica=name, clock=clock, default_approvers=("*",))
    ticks = Ticks()
    channel = SlackChannel(
        slack_settings(fake),
        service=service,
        directory=ApproverDirectory(slack_approvers()),
        default_approvers=("*",),
        seen_requests=SqlSeenRequests.on(store, clock=clock),
        clock=clock,
        reconcile_sleep=ticks,
        claim_lease=claim_lease,
    )
    returned = Returned(channel.notifier)
    service.add_listener(returned)
    async with store, channel.running(), service.running(sweep=False):
        await ticks.passes(1)  # the pass on start is over
        yield Replica(store, service, channel.notifier, returned, ticks)


@asynccontextmanager
async def two_replicas(
    url: str, now: ManualClock, **options: Any
) -> AsyncIterator[tuple[FakeSlack, Replica, Replica]]:
    async with (
        FakeSlack() as fake,
        replica(url, fake, "A", now, **options) as a,
        replica(url, fake, "B", now, **options) as b,
    ):
        yield fake, a, b


def order(**arguments: Any) -> NewApproval:
    return NewApproval(
        agent="trader",
        server="exchange",
        tool="place_order",
        upstream_tool="place_order",
        arguments={**BIG_ORDER, **arguments},
        policy_revision="test-revision",
        rule="rules[1]",
        rule_reason="orders above 5 units need a second pair of eyes",
        timeout=timedelta(minutes=30),
        channels=("slack:#approvals",),
    )


def shown(message_blocks: list[dict[str, Any]]) -> str:
    return str(message_blocks[0]["text"]["text"])


async def statuses_shown(store: SqlApprovalStore, approval_id: str) -> list[str]:
    trail = await store.audit_trail(approval_id)
    return [record.details["status"] for record in trail if record.event in ("notified", "slack_updated")]


def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


async def test_a_decision_made_while_another_replica_posts_reaches_the_message(database_url: str) -> None:
    now = clock()
    async with two_replicas(database_url, now) as (fake, a, b):
        with anyio.fail_after(30):
            fake.hold("chat.postMessage")
            held, _ = await b.service.open(order())
            await fake.wait_for_call("chat.postMessage")  # B's post is in flight

            await a.service.decide(held.id, Deny("no"), approver=Approver("alice"), via="api")
            assert await a.returned.next() == held.id  # A left the message to B, who is posting it
            assert fake.calls_to("chat.update") == []

            fake.release("chat.postMessage")
            assert await b.returned.next() == held.id  # B stored the message, looked again, updated it
            message = fake.only_message()
            assert shown(message.blocks) == "Denied: place_order"
            assert "broker_approve" not in json.dumps(message.blocks)
            assert len(fake.calls_to("chat.postMessage")) == 1 and len(fake.calls_to("chat.update")) == 1
            stored = await a.store.get(held.id)
            assert stored is not None and (stored.status, stored.slack_ts) == (
                ApprovalStatus.DENIED,
                message.ts,
            )
            assert await statuses_shown(a.store, held.id) == ["pending", "denied"]


async def test_one_replica_posts_and_a_lapsed_claim_leaves_no_duplicate(database_url: str) -> None:
    now = clock()
    async with two_replicas(database_url, now, claim_lease=timedelta(seconds=60)) as (fake, a, b):
        with anyio.fail_after(30):
            fake.hold("chat.postMessage")
            held, _ = await b.service.open(order())
            await fake.wait_for_call("chat.postMessage")

            await a.notifier.reconcile()  # B's claim holds: A does not post too
            await a.notifier.reconcile()
            assert len(fake.calls_to("chat.postMessage")) == 1

            now.advance(timedelta(seconds=61))  # B hangs past its claim, as if it had died
            await a.notifier.reconcile()
            await fake.wait_for_call("chat.postMessage", 2)  # A took the post over

            fake.release("chat.postMessage")
            assert await b.returned.next() == held.id  # B found its claim taken and deleted its message
            await a.notifier.settled(held.id)
            (kept,) = fake.messages.values()
            (duplicate,) = fake.deleted
            stored = await a.store.get(held.id)
            assert stored is not None and stored.slack_ts == kept.ts != duplicate.ts
            events = [record.event for record in await a.store.audit_trail(held.id)]
            assert events.count("notified") == 1 and events.count("slack_duplicate_deleted") == 1


async def test_the_periodic_pass_repairs_what_a_stopped_replica_left_and_rewrites_nothing_twice(
    database_url: str,
) -> None:
    now = clock()
    async with two_replicas(database_url, now) as (fake, a, b):
        with anyio.fail_after(30):
            posted, _ = await a.service.open(order())
            assert await a.returned.next() == posted.id
            await b.service.decide(posted.id, Deny(), approver=Approver("bob"), via="api")
            assert await b.returned.next() == posted.id
            assert len(fake.calls_to("chat.update")) == 1

            await a.ticks.tick()  # A's own record says the message shows the prompt, so it looks
            await a.ticks.tick()  # ... and finds in the audit trail that B has shown the denial
            await a.notifier.settled(posted.id)
            assert len(fake.calls_to("chat.update")) == 1

            # A replica that stopped right after cancelling, before telling Slack.
            orphan, _ = await a.service.open(order(quantity=50))
            assert await a.returned.next() == orphan.id
            await b.store.transition(
                orphan.id,
                expected={ApprovalStatus.PENDING},
                to=ApprovalStatus.CANCELLED,
                changes={"decided_by": "trader", "decided_via": "agent", "decision_reason": "gave up"},
                audit=AuditEvent("cancelled", "trader", {"reason": "gave up"}),
            )
            await a.ticks.tick()  # stale once: perhaps its replica is about to update it
            assert len(fake.calls_to("chat.update")) == 1
            await a.ticks.tick()  # stale twice: nobody will
            message = await fake.wait_for(
                lambda: next(
                    (m for m in fake.messages.values() if shown(m.blocks) == "Cancelled: place_order"), None
                )
            )
            assert "broker_approve" not in json.dumps(message.blocks)
            await a.notifier.settled(orphan.id)
            assert await statuses_shown(a.store, orphan.id) == ["pending", "cancelled"]
