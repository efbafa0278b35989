"""Slack shows time-boxed grants: the held call's thread says when its approval made a grant and
when that grant is revoked."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from broker.approvals.grants import GrantRequest, GrantScope
from broker.approvals.model import Approver
from broker.approvals.verdict import Approve
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import BIG_ORDER, POLICY, slack_broker

pytestmark = pytest.mark.anyio

GRANT_POLICY = POLICY.replace(
    '    channels: ["slack:#approvals", "web"]\n',
    '    channels: ["slack:#approvals", "web"]\n    grant: {max: 1h, scope: [identical, matching]}\n',
)


async def test_the_thread_announces_the_grant_and_its_revocation(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, policy=GRANT_POLICY) as rig:
        with anyio.fail_after(20):
            decision = rig.broker.policy_file.holder.current.decide(
                "place_order", server="exchange", agent="trader", arguments=BIG_ORDER
            )
            assert decision.approval is not None and decision.approval.grant is not None
            approval = await rig.open_approval(rule=decision.rule, policy_revision=decision.revision)
            message = await rig.message_of(approval)
            alice = Approver("alice", frozenset({"trading-leads"}))
            await rig.broker.approvals.decide(
                approval.id,
                Approve(grant=GrantRequest(1800, GrantScope.MATCHING, 10)),
                approver=alice,
                via="web",
            )

            def replies() -> list[str]:
                return [
                    call.params["text"]
                    for call in fake.calls_to("chat.postMessage")
                    if call.params.get("thread_ts") == message.ts
                ]

            made = await fake.wait_for(lambda: replies() or None)
            assert made[0].startswith("approved + grant for 30 min (10 calls, matching) by alice")
            bob = Approver("bob", frozenset({"trading-leads"}))
            _, revoked = await rig.broker.grants.revoke(f"g-{approval.id}", approver=bob)
            assert revoked
            both = await fake.wait_for(lambda: replies() if len(replies()) == 2 else None)
            assert both[1] == f"grant g-{approval.id} revoked by bob after 0 of 10 calls"
