"""Approving and denying held calls from Slack, end to end: agent, broker, upstream, fake Slack."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.approvals import ApprovalStatus
from tests.e2e.harness import exchange_server
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import BIG_ORDER, SLACK_USERS, slack_broker

pytestmark = pytest.mark.anyio


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


def blocks_of_type(blocks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [block for block in blocks if block["type"] == kind]


async def test_a_click_on_approve_releases_the_call_and_the_message_says_who_approved(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, servers=exchange_server()) as rig:
        with anyio.fail_after(30):
            async with rig.running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await rig.feed.opened.receive()
                message = await rig.message_of(approval)

                assert message.channel == "C0APPROVALS"
                header, fields, about, held, arguments, actions = message.blocks
                assert header == {
                    "type": "header",
                    "text": {"type": "plain_text", "text": "Approval needed: place_order", "emoji": True},
                }
                field_texts = [field["text"] for field in fields["fields"]]
                assert field_texts[:2] == ["*Agent*\ntrader", "*Upstream server*\nexchange"]
                assert field_texts[2].startswith(
                    f"*Requested*\n<!date^{int(approval.created_at.timestamp())}^"
                )
                assert field_texts[3].startswith(
                    f"*Auto-deny*\n<!date^{int(approval.expires_at.timestamp())}^"
                )
                assert "{date_short_pretty} {time}|" in field_texts[3]
                assert "*financial · critical risk*" in about["elements"][0]["text"]
                assert "Place a limit order." in about["elements"][0]["text"]
                shown = arguments["text"]["text"]
                assert f"SHA-256 `{approval.arguments_hash[:12]}`" in shown
                # The condition's field first, then the agent's order; every short value whole.
                assert shown.split("```\n", 1)[1].rsplit("\n```", 1)[0].split("\n") == [
                    "quantity  10",
                    "symbol    BTCUSD",
                    "side      buy",
                    "price     90000",
                ]
                held_text = held["elements"][0]["text"]
                assert (
                    "because *quantity = 10 &gt; 5*" in held_text and "approval `" + approval.id in held_text
                )
                approve, deny = actions["elements"]
                assert (approve["action_id"], approve["value"], approve["style"]) == (
                    f"broker_approve:{approval.id}",
                    approval.arguments_hash,  # a yes counts only for the arguments shown
                    "primary",
                )
                assert approve["confirm"]["confirm"]["text"] == "Approve"
                assert approval.arguments_hash[:12] in approve["confirm"]["text"]["text"]
                assert (deny["action_id"], deny["value"], deny["style"]) == (
                    f"broker_deny:{approval.id}",
                    approval.id,
                    "danger",
                )

                started = time.monotonic()
                clicked = await rig.click(approval.id, SLACK_USERS["alice"], approve=True)
                assert clicked.status_code == 200 and clicked.content == b""
                assert time.monotonic() - started < 3  # Slack's acknowledgement deadline

            result = outcome["result"]
            assert not result.is_error and result.structured_content["quantity"] == 10

            done = await rig.message_saying(approval, "Completed OK")
            assert not blocks_of_type(done.blocks, "actions")
            assert done.blocks[0]["text"]["text"] == "Completed: place_order"
            said = done.blocks[-1]["text"]["text"]
            assert said.startswith(":white_check_mark: *Approved* by <@U0ALICE> at <!date^")
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.COMPLETED
            assert (stored.decided_by, stored.decided_via) == ("alice", "slack")
            assert (stored.slack_channel, stored.slack_ts) == (message.channel, message.ts)
            records = await rig.broker.store.audit_trail(approval.id)
            trail = [record.event for record in records if record.event != "slack_updated"]
            assert trail[:2] == ["requested", "notified"]
            assert trail[2:5] == ["approved", "released", "completed"]
            # What the message shows is on record, for whichever replica looks at it next.
            shown = [
                record.details["status"]
                for record in records
                if record.event in ("notified", "slack_updated")
            ]
            assert shown[0] == "pending" and shown[-1] == "completed"
            assert fake.calls_to("chat.postEphemeral") == []


async def test_deny_opens_a_modal_and_the_agent_sees_the_reason(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, servers=exchange_server()) as rig:
        with anyio.fail_after(30):
            async with rig.running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await rig.feed.opened.receive()
                await rig.message_of(approval)
                assert (await rig.click(approval.id, SLACK_USERS["bob"], approve=False)).status_code == 200
                (opened,) = await fake.wait_for_call("views.open")
                assert opened.params["trigger_id"] == f"trigger-{approval.id}-{SLACK_USERS['bob']}"
                view = opened.params["view"]
                assert view["callback_id"] == "broker_deny_reason"
                assert json.loads(view["private_metadata"]) == {
                    "approval_id": approval.id,
                    "channel": "C0APPROVALS",
                }
                assert [block["type"] for block in view["blocks"]] == ["section", "input"]
                assert view["blocks"][1]["optional"] is True
                pending = await rig.broker.store.get(approval.id)
                assert (
                    pending is not None and pending.status is ApprovalStatus.PENDING
                )  # the click alone decides nothing

                submitted = await rig.submit_denial(
                    approval.id, SLACK_USERS["bob"], "  too large <today> & tomorrow "
                )
                assert submitted.status_code == 200 and submitted.content == b""

            result = outcome["result"]
            assert result.is_error
            assert "bob denied" in text_of(result) and "too large <today> & tomorrow" in text_of(result)
            denied = await rig.message_saying(approval, "*Denied* by <@U0BOB>")
            said = denied.blocks[-1]["text"]["text"]
            assert said.endswith(": too large &lt;today&gt; &amp; tomorrow")
            assert not blocks_of_type(denied.blocks, "actions")
