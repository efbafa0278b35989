"""Escalation in Slack: the replica that takes a step posts a new message, with the buttons, in the
step's channel, mentioning who is asked now; the original message says it was escalated; a person
the step added can approve from the new post. Two replicas on one database post each step once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from broker.policy.escalation import EscalationStep
from tests.slack.fake_slack import FakeSlack
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
