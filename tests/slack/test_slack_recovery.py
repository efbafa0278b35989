"""The message catches up whatever happened meanwhile: a restart, an outage of any length."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from broker.channels.slack.notifier import SlackNotifier
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import ControlledSleep, SlackRig, slack_broker

pytestmark = pytest.mark.anyio


def notifier_of(rig: SlackRig) -> SlackNotifier:
    assert rig.broker.slack is not None
    return rig.broker.slack.notifier


async def test_an_approval_opened_while_slack_was_down_is_posted_after_a_restart(tmp_path: Path) -> None:
    sleep = ControlledSleep()
    sleep.hold()
    async with FakeSlack() as fake:
        with anyio.fail_after(20):
            async with slack_broker(tmp_path, fake, sleep=sleep) as rig:
                await fake.go_down()
                approval = await rig.open_approval()
                await sleep.wait_for_sleeps(1)  # the post failed; the broker stops while backing off
            await fake.come_back()
            assert fake.calls_to("chat.postMessage") == []

            async with slack_broker(tmp_path, fake) as rig:
                message = await rig.message_of(approval)  # posted by the reconciler's first pass
                assert message.blocks[0]["text"]["text"] == "Approval needed: place_order"
                assert message.blocks[-1]["type"] == "actions"
                stored = await rig.broker.store.get(approval.id)
                assert stored is not None and (stored.slack_channel, stored.slack_ts) == (
                    message.channel,
                    message.ts,
                )
                assert len(fake.calls_to("chat.postMessage")) == 1


async def test_a_decision_slack_missed_before_a_restart_reaches_the_message_after_it(tmp_path: Path) -> None:
    sleep = ControlledSleep()
    sleep.hold()
    async with FakeSlack() as fake:
        with anyio.fail_after(20):
            async with slack_broker(tmp_path, fake, sleep=sleep) as rig:
                approval = await rig.open_approval()
                message = await rig.message_of(approval)
                await fake.go_down()
                async with rig.running.approver("alice") as alice:
                    denied = await alice.post(f"/api/approvals/{approval.id}/deny", json={"reason": "no"})
                    assert denied.status_code == 200
                await sleep.wait_for_sleeps(1)  # the update failed; the broker stops while backing off
            await fake.come_back()
            assert "broker_approve" in json.dumps(message.blocks)

            async with slack_broker(tmp_path, fake) as rig:
                await rig.message_saying(approval, "*Denied* by <@U0ALICE> (via api)")  # on start
                await notifier_of(rig).settled(approval.id)
                assert "broker_approve" not in json.dumps(message.blocks)
                assert len(fake.calls_to("chat.update")) == 1
                trail = await rig.broker.store.audit_trail(approval.id)
                assert [r.details["status"] for r in trail if r.event in ("notified", "slack_updated")] == [
                    "pending",
                    "denied",
                ]

                await notifier_of(rig).reconcile()  # nothing left to do, and nothing is done twice
                await notifier_of(rig).reconcile()
                await notifier_of(rig).settled(approval.id)
                assert len(fake.calls_to("chat.update")) == 1


async def test_retries_go_on_for_as_long_as_slack_is_down(tmp_path: Path) -> None:
    sleep = ControlledSleep()
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, sleep=sleep) as rig:
        with anyio.fail_after(60):
            await fake.go_down()
            approval = await rig.open_approval()
            # Thirty failed attempts: about fifty minutes of backoff, well past where retries used to stop.
            await sleep.wait_for_sleeps(30)
            sleep.hold()
            await fake.come_back()
            sleep.release()
            message = await rig.message_of(approval)
            assert message.blocks[0]["text"]["text"] == "Approval needed: place_order"

            attempts = len(sleep.delays)
            assert sleep.delays[:7] == [2, 4, 8, 16, 32, 64, 120]
            assert set(sleep.delays[6:]) == {120}
            trail = await rig.broker.store.audit_trail(approval.id)
            failures = [record for record in trail if record.event == "slack_post_failed"]
            # Every failure is logged; the audit trail keeps attempts 1, 2, 4, 8, ...
            assert [record.details["attempt"] for record in failures] == [
                2**n for n in range(int(math.log2(attempts)) + 1)
            ]
            assert all(record.details["final"] is False for record in failures)
            assert trail[-1].event == "notified"
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING
