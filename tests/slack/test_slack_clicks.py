"""Who may click, and what a click on a settled approval is told."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import RISK_GROUP, RISK_MEMBER, SLACK_USERS, slack_broker

pytestmark = pytest.mark.anyio


async def test_a_slack_user_who_may_not_approve_is_told_so_privately_and_nothing_changes(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            assert (await rig.click(approval.id, SLACK_USERS["mallory"], approve=True)).status_code == 200
            (told,) = await fake.wait_for_call("chat.postEphemeral")
            assert told.params["user"] == "U0MALLORY" and told.params["channel"] == "C0APPROVALS"
            assert "You may not approve this" in told.params["text"]
            assert "mallory is not an approver" in told.params["text"]

            assert (await rig.click(approval.id, "U0STRANGER", approve=False)).status_code == 200
            _, stranger = await fake.wait_for_call("chat.postEphemeral", 2)
            assert stranger.params["user"] == "U0STRANGER"
            assert "You may not deny this: your Slack account is not linked" in stranger.params["text"]

            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING
            assert fake.calls_to("views.open") == [] and fake.calls_to("chat.update") == []


async def test_members_of_a_slack_user_group_named_by_the_rule_may_decide(tmp_path: Path) -> None:
    async with (
        FakeSlack(usergroups={RISK_GROUP: [RISK_MEMBER, "U0DAVE"]}) as fake,
        slack_broker(tmp_path, fake) as rig,
    ):
        with anyio.fail_after(20):
            # Named directly in the rule ...
            direct = await rig.open_approval(approvers=(f"@slack:{RISK_GROUP}",), arguments={"n": 1})
            await rig.message_of(direct)
            # ... or through the config mapping risk-officers -> S0RISK.
            mapped = await rig.open_approval(approvers=("@risk-officers",), arguments={"n": 2})
            await rig.message_of(mapped)

            assert (await rig.click(direct.id, SLACK_USERS["alice"], approve=False)).status_code == 200
            (refused,) = await fake.wait_for_call("chat.postEphemeral")
            assert "You may not deny this" in refused.params["text"]

            await rig.click(direct.id, RISK_MEMBER, approve=False)
            await fake.wait_for_call("views.open")
            await rig.submit_denial(direct.id, RISK_MEMBER, None)
            denied = await rig.message_saying(direct, "*Denied* by <@U0CAROL>")
            assert denied.blocks[-1]["text"]["text"].endswith("UTC>")  # no reason given, none shown

            await rig.click(mapped.id, "U0DAVE", approve=False)
            await fake.wait_for_call("views.open", 2)
            await rig.submit_denial(mapped.id, "U0DAVE", "not today")
            await rig.message_saying(mapped, "*Denied* by <@U0DAVE>")
            stored = await rig.broker.store.get(mapped.id)
            assert stored is not None and (stored.decided_by, stored.decision_reason) == (
                "slack:U0DAVE",
                "not today",
            )
            # Membership is cached: one lookup of S0RISK served all four checks.
            assert len(fake.calls_to("usergroups.users.list")) == 1


async def test_a_second_click_is_told_who_approved_first(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            async with anyio.create_task_group() as clicks:  # both at once; exactly one wins
                for name in ("alice", "bob"):
                    clicks.start_soon(partial(rig.click, approval.id, SLACK_USERS[name], approve=True))
            (told,) = await fake.wait_for_call("chat.postEphemeral")
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.decided_at is not None
            winner = stored.decided_by
            loser = "bob" if winner == "alice" else "alice"
            assert told.params["user"] == SLACK_USERS[loser]
            assert told.params["text"] == (
                f"This call was already approved by <@{SLACK_USERS[str(winner)]}> at "
                f"<!date^{int(stored.decided_at.timestamp())}^{{date_short_pretty}} {{time}}|"
                f"{stored.decided_at.strftime('%Y-%m-%d %H:%M')} UTC>."
            )
            trail = [record.event for record in await rig.broker.store.audit_trail(approval.id)]
            assert trail.count("approved") == 1
            # No upstream named exchange is connected here, so the call waits approved, unforwarded.
            approved = await rig.message_saying(approval, f"*Approved* by <@{SLACK_USERS[str(winner)]}>")
            assert approved.blocks[0]["text"]["text"] == "Approved: place_order"


async def test_a_click_after_the_deadline_is_told_the_request_expired(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval(timeout=timedelta(seconds=0.5))
            await rig.message_of(approval)
            expired = await rig.message_saying(approval, "*Expired, auto-denied*")
            assert expired.blocks[0]["text"]["text"] == "Expired: place_order"
            await rig.click(approval.id, SLACK_USERS["alice"], approve=True)
            (told,) = await fake.wait_for_call("chat.postEphemeral")
            assert "expired" in told.params["text"] and "nothing was approved" in told.params["text"]
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.EXPIRED


async def test_a_decision_from_the_api_updates_the_slack_message(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            async with rig.running.approver("bob") as bob:
                denied = await bob.post(f"/api/approvals/{approval.id}/deny", json={"reason": "limits"})
                assert denied.status_code == 200
            message = await rig.message_saying(approval, "*Denied* by <@U0BOB> (via api)")
            assert message.blocks[-1]["text"]["text"].endswith(": limits")
            cancelled = await rig.open_approval(arguments={"symbol": "ETHUSD"})
            await rig.message_of(cancelled)
            await rig.broker.approvals.cancel(cancelled.id, actor="trader", reason="agent gave up")
            await rig.message_saying(cancelled, "*Cancelled by the agent*")
            assert fake.calls_to("chat.postEphemeral") == []
