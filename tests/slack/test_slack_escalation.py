"""Escalation in Slack: the replica that takes a step posts a new message, with the buttons, in the
step's channel, mentioning who is asked now; the original message says it was escalated; a person
the step added can approve from the new post. Two replicas on one database post each step once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from broker.approvals import ApprovalStatus
from broker.approvals.escalation import escalate_due
from broker.approvals.escalation_posts import PostOutcome
from broker.policy.escalation import EscalationStep
from broker.store.escalation_posts import SqlEscalationPostStore
from broker.store.escalations import SqlEscalationStore
from tests.slack.fake_slack import FakeSlack, Message
from tests.slack.rig import SLACK_USERS, slack_broker
from tests.store.conftest import ManualClock
from tests.store.conftest import database_url as database_url

pytestmark = pytest.mark.anyio

CHANNELS = {"#approvals": "C0APPROVALS", "#escalations": "C0ESCALATIONS"}
STEP = EscalationStep(600.0, ("bob",), ("slack:#escalations",), 900.0)


async def test_an_escalation_posts_once_in_its_channel_and_the_added_approver_decides_there(
    tmp_path: Path,
) -> None:
    clock = ManualClock(datetime.now(UTC))
    async with FakeSlack(channels=CHANNELS) as fake, slack_broker(tmp_path, fake, clock=clock) as rig:
        with anyio.fail_after(30):
            approval = await rig.open_approval(
                approvers=("alice",), timeout=timedelta(minutes=20), escalation=(STEP,)
            )
            original = await rig.message_of(approval)
            assert original.channel == "C0APPROVALS"

            await rig.click(approval.id, SLACK_USERS["bob"], approve=True)
            (refused,) = await fake.wait_for_call("chat.postEphemeral")
            assert "not an approver" in refused.params["text"]

            clock.advance(timedelta(minutes=10))
            await rig.broker.approvals.sweep()
            await rig.broker.approvals.sweep()  # a second pass takes nothing more
            post = await fake.wait_for(
                lambda: next((m for m in fake.messages.values() if m.channel == "C0ESCALATIONS"), None)
            )
            assert "Escalated" in json.dumps(post.blocks) and f"<@{SLACK_USERS['bob']}>" in json.dumps(
                post.blocks
            )
            assert approval.id in json.dumps(post.blocks)  # the buttons decide this approval
            await rig.message_saying(approval, "escalated to bob")

            await rig.click(approval.id, SLACK_USERS["bob"], approve=True)
            await rig.message_saying(approval, "Approved")
            decided = await rig.broker.store.get(approval.id)
            assert decided is not None and decided.status is not ApprovalStatus.PENDING
            assert decided.decided_by == "bob"
            assert decided.expires_at == approval.expires_at + timedelta(minutes=15)
            trail = [r.event for r in await rig.broker.store.audit_trail(approval.id)]
            assert trail.count("escalated") == 1 and trail.count("slack_escalation_posted") == 1
            metrics = (await rig.broker.metrics.render()).decode()
            assert 'broker_approval_escalations_total{step="1"} 1.0' in metrics
        assert [m.channel for m in fake.messages.values()].count("C0ESCALATIONS") == 1


async def test_two_replicas_sweeping_together_post_the_step_once(tmp_path: Path, database_url: str) -> None:
    clock = ManualClock(datetime.now(UTC))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        FakeSlack(channels=CHANNELS) as fake,
        slack_broker(tmp_path / "a", fake, clock=clock, database_url=database_url) as a,
        slack_broker(tmp_path / "b", fake, clock=clock, database_url=database_url) as b,
    ):
        with anyio.fail_after(30):
            approval = await a.open_approval(
                approvers=("alice",), timeout=timedelta(minutes=20), escalation=(STEP,)
            )
            await a.message_of(approval)
            clock.advance(timedelta(minutes=10))
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(a.broker.approvals.sweep)
                    group.start_soon(b.broker.approvals.sweep)
            await a.message_saying(approval, "escalated to bob")
            await fake.wait_for(
                lambda: next((m for m in fake.messages.values() if m.channel == "C0ESCALATIONS"), None)
            )
            for replica in (a, b):
                assert replica.broker.slack is not None
                await replica.broker.slack.notifier.settled(approval.id)
            trail = await a.broker.store.audit_trail(approval.id)
        posts = [m for m in fake.messages.values() if m.channel == "C0ESCALATIONS"]
        assert len(posts) == 1 and [r.event for r in trail].count("escalated") == 1


def escalation_posts(fake: FakeSlack) -> list[Message]:
    return [m for m in fake.messages.values() if m.channel == "C0ESCALATIONS"]


async def test_a_step_whose_replica_died_before_posting_is_posted_once_by_another_replica(
    tmp_path: Path, database_url: str
) -> None:
    """Replica A takes the step (its compare-and-set commits) and stops before posting: the
    reconcilers of B (and of A's successor, racing it) make the step's post exactly once."""
    clock = ManualClock(datetime.now(UTC))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        FakeSlack(channels=CHANNELS) as fake,
        slack_broker(tmp_path / "a", fake, clock=clock, database_url=database_url) as a,
        slack_broker(tmp_path / "b", fake, clock=clock, database_url=database_url) as b,
    ):
        assert a.broker.slack is not None and b.broker.slack is not None
        with anyio.fail_after(30):
            approval = await a.open_approval(
                approvers=("alice",), timeout=timedelta(minutes=20), escalation=(STEP,)
            )
            await a.message_of(approval)
            clock.advance(timedelta(minutes=10))
            # What A's sweep commits, without what it does next: A died in between.
            [taken] = await escalate_due(SqlEscalationStore(a.broker.store), clock(), replica="a")
            assert taken.approval.escalation_step == 1 and escalation_posts(fake) == []

            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(b.broker.slack.notifier.reconcile)
                    group.start_soon(a.broker.slack.notifier.reconcile)
            [post] = await fake.wait_for(lambda: escalation_posts(fake))
            assert "Escalated" in json.dumps(post.blocks) and approval.id in json.dumps(post.blocks)
            store = SqlEscalationPostStore(a.broker.store)
            rows = await store.of([approval.id])
            while not rows or rows[0].outcome is None:  # the poster records what Slack answered
                await anyio.lowlevel.checkpoint()
                rows = await store.of([approval.id])
            assert [(r.step, r.channel, r.outcome, r.ts) for r in rows] == [
                (1, "#escalations", PostOutcome.POSTED, post.ts)
            ]
            for replica in (a, b):
                await replica.broker.slack.notifier.reconcile()  # settled: nothing is owed any more
            trail = [r.event for r in await a.broker.store.audit_trail(approval.id)]
        assert len(escalation_posts(fake)) == 1
        assert trail.count("escalated") == 1 and trail.count("slack_escalation_posted") == 1


async def test_a_post_claimed_by_a_replica_that_died_is_made_once_its_claim_lapses(
    tmp_path: Path, database_url: str
) -> None:
    clock = ManualClock(datetime.now(UTC))
    async with (
        FakeSlack(channels=CHANNELS) as fake,
        slack_broker(tmp_path, fake, clock=clock, database_url=database_url) as b,
    ):
        assert b.broker.slack is not None
        with anyio.fail_after(30):
            approval = await b.open_approval(
                approvers=("alice",), timeout=timedelta(minutes=20), escalation=(STEP,)
            )
            await b.message_of(approval)
            clock.advance(timedelta(minutes=10))
            await escalate_due(SqlEscalationStore(b.broker.store), clock(), replica="a")
            store = SqlEscalationPostStore(b.broker.store)
            now = datetime.now(UTC)
            claimed = await store.claim(
                approval.id, 1, "#escalations", writer="a", now=now, until=now + timedelta(hours=1)
            )
            assert claimed
            await b.broker.slack.notifier.reconcile()  # A's claim is live: B leaves the post to A
            assert not await store.claim(
                approval.id, 1, "#escalations", writer="b", now=now, until=now + timedelta(hours=1)
            )
            # A died: its claim lapses (as if an hour went by).
            assert await store.claim(approval.id, 1, "#escalations", writer="a", now=now, until=now)
            await b.broker.slack.notifier.reconcile()
            [post] = await fake.wait_for(lambda: escalation_posts(fake))
            rows = await store.of([approval.id])
            while rows[0].outcome is None:
                await anyio.lowlevel.checkpoint()
                rows = await store.of([approval.id])
            assert rows[0].outcome is PostOutcome.POSTED and rows[0].ts == post.ts
            assert not await store.claim(
                approval.id, 1, "#escalations", writer="c", now=now + timedelta(days=1), until=now
            )
        assert len(escalation_posts(fake)) == 1
