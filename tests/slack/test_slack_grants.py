"""Slack shows time-boxed grants: the held call's thread says when its approval made a grant and
when that grant is revoked; a call the grant lets through as a task never gets a prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from broker.approvals.grants import GrantRequest, GrantScope
from broker.approvals.model import ApprovalStatus, Approver
from broker.approvals.verdict import Approve
from tests.e2e.harness import exchange_server
from tests.e2e.test_grants_flow import call_as_task
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


async def test_a_task_call_let_through_by_a_grant_never_gets_a_prompt(tmp_path: Path) -> None:
    """Its approval is born approved: Slack posts nothing for it, not on the change nor on a
    reconciler pass, and its task still gives the upstream's answer."""
    async with (
        FakeSlack() as fake,
        slack_broker(tmp_path, fake, servers=exchange_server(), policy=GRANT_POLICY) as rig,
    ):
        notifier = rig.broker.slack.notifier
        with anyio.fail_after(30):
            async with rig.running.client() as client:
                async with anyio.create_task_group() as tasks:
                    outcome: dict[str, Any] = {}

                    async def agent() -> None:
                        outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                    tasks.start_soon(agent)
                    held = await rig.feed.opened.receive()
                    await rig.message_of(held)
                    await rig.broker.approvals.decide(
                        held.id,
                        Approve(grant=GrantRequest(1800, GrantScope.MATCHING, 10)),
                        approver=Approver("alice", frozenset({"trading-leads"})),
                        via="web",
                    )
                assert not outcome["result"].is_error
                created = await call_as_task(client, {**BIG_ORDER, "quantity": 20})
                result = await client.session.send_request(
                    types.GetTaskPayloadRequest(
                        params=types.GetTaskPayloadRequestParams(task_id=created.task.task_id)
                    ),
                    types.CallToolResult,
                )
                assert not result.is_error and result.structured_content is not None
                assert result.structured_content["quantity"] == 20
            granted = await rig.broker.approvals.store.get_by_task(created.task.task_id)
            assert granted is not None and granted.decided_via == "grant"
            await notifier.settled(granted.id)
            await notifier.reconcile()
            await notifier.settled(granted.id)
            await notifier.settled(held.id)
            assert await rig.broker.approvals.store.list(statuses={ApprovalStatus.PENDING}) == []
        posts = fake.calls_to("chat.postMessage")
        assert [post.params.get("thread_ts") for post in posts].count(None) == 1  # the held call's prompt
        assert not [post for post in posts if granted.id in json.dumps(post.params)]
        assert rig.feed.opened.statistics().current_buffer_used == 0
