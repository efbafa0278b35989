"""Slack being slow, rate-limiting or down never decides anything, and the messages catch up."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import ControlledSleep, slack_broker

pytestmark = pytest.mark.anyio


async def test_a_rate_limited_update_waits_as_slack_asks_and_lands(tmp_path: Path) -> None:
    sleep = ControlledSleep()
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, sleep=sleep) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            fake.rate_limit("chat.update", times=2, retry_after=7)
            async with rig.running.approver("alice") as alice:
                assert (await alice.post(f"/api/approvals/{approval.id}/deny")).status_code == 200
            message = await rig.message_saying(approval, "*Denied* by <@U0ALICE> (via api)")
            assert sleep.delays == [7, 7]
            updates = fake.calls_to("chat.update")
            assert len(updates) == 3 and len(message.history) == 2
            trail = [record.event for record in await rig.broker.store.audit_trail(approval.id)]
            assert "slack_update_failed" not in trail  # it did not fail in the end


async def test_while_slack_is_down_the_approval_waits_and_the_post_catches_up(tmp_path: Path) -> None:
    sleep = ControlledSleep()
    sleep.hold()
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, sleep=sleep) as rig:
        with anyio.fail_after(20):
            await fake.go_down()
            approval = await rig.open_approval()
            await sleep.wait_for_sleeps(1)  # the first post failed; the notifier backs off
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING and stored.slack_ts is None
            trail = await rig.broker.store.audit_trail(approval.id)
            failure = next(record for record in trail if record.event == "slack_post_failed")
            assert failure.actor == "slack"
            assert "unreachable" in failure.details["error"]
            assert failure.details["attempt"] == 1 and failure.details["retry_in"] == 2
            assert failure.details["final"] is False

            # The web inbox and the API keep working without Slack.
            async with rig.running.approver("bob") as bob:
                listed = (await bob.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
                assert [item["id"] for item in listed] == [approval.id]
                assert (
                    await bob.post(f"/api/approvals/{approval.id}/deny", json={"reason": "no"})
                ).status_code == 200

            sleep.release()
            await sleep.wait_for_sleeps(2)  # the second attempt failed too, and backed off longer
            assert sleep.delays[:2] == [2, 4]
            await fake.come_back()
            message = await rig.message_saying(approval, "*Denied* by <@U0BOB> (via api)")
            assert message.blocks[0]["text"]["text"] == "Denied: place_order"
            events = [record.event for record in await rig.broker.store.audit_trail(approval.id)]
            assert events.count("slack_post_failed") >= 2
            assert events[-1] == "notified"
            assert fake.calls_to("chat.update") == []  # posted as it stands, nothing left to update


async def test_slack_refusing_the_channel_is_recorded_and_not_retried(tmp_path: Path) -> None:
    sleep = ControlledSleep()
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, sleep=sleep) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval(channels=("slack:#nowhere",))
            await fake.wait_for_call("chat.postMessage")
            assert rig.broker.slack is not None
            await rig.broker.slack.notifier.settled(approval.id)
            trail = await rig.broker.store.audit_trail(approval.id)
            failure = next(record for record in trail if record.event == "slack_post_failed")
            assert failure.details["error"] == "Slack refused chat.postMessage: channel_not_found"
            assert failure.details["final"] is True and sleep.delays == []
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING
