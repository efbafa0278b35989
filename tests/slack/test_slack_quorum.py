"""Four-eyes approval from Slack: a person who voted on the web and clicks in Slack counts once, a
Slack user-group member without an approver entry cannot count, and a second approver's click
releases the call, with the votes on the message."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from broker.approvals.model import Approver
from broker.approvals.verdict import Approve
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import RISK_GROUP, RISK_MEMBER, SLACK_USERS, slack_broker

pytestmark = pytest.mark.anyio


async def test_a_person_on_web_and_slack_counts_once_and_a_slack_only_member_never(tmp_path: Path) -> None:
    async with (
        FakeSlack(usergroups={RISK_GROUP: [RISK_MEMBER]}) as fake,
        slack_broker(tmp_path, fake) as rig,
    ):
        with anyio.fail_after(20):
            # Asked under the policy in force, so the approval's own approvers and quorum apply.
            approval = await rig.open_approval(
                approvers=("@trading-leads", f"@slack:{RISK_GROUP}"),
                quorum=2,
                policy_revision=rig.broker.policy_file.holder.current.revision,
            )
            message = await rig.message_of(approval)
            assert "0 of 2 approvals" in str(message.blocks)
            alice = Approver("alice", frozenset({"trading-leads"}))
            await rig.broker.approvals.decide(approval.id, Approve(), approver=alice, via="web")

            await rig.click(approval.id, SLACK_USERS["alice"], approve=True)
            (told,) = await fake.wait_for_call("chat.postEphemeral")
            assert told.params["text"] == "Your approval is recorded; 1 of 2 approvals: alice."

            await rig.click(approval.id, RISK_MEMBER, approve=True)
            _, refused = await fake.wait_for_call("chat.postEphemeral", 2)
            assert "cannot count toward a quorum of 2" in refused.params["text"]
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING
            assert [(vote.approver, vote.via) for vote in stored.votes] == [("alice", "web")]

            await rig.click(approval.id, SLACK_USERS["bob"], approve=True)
            await rig.message_saying(approval, "2 of 2 approvals: alice, bob")
            decided = await rig.broker.store.get(approval.id)
            assert decided is not None and decided.decided_by == "alice, bob"
            assert decided.decided_via == "slack"
