"""Approve with edits and time-boxed grants from Slack: the edit modal, refusals, stale clicks after
an edit, and the ``Approve + allow`` button (broker/channels/slack/edits.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.approvals import Approval, ApprovalStatus
from tests.e2e.harness import exchange_server
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import BIG_ORDER, POLICY, SLACK_USERS, SlackRig, slack_broker

pytestmark = pytest.mark.anyio

RULE_END = '    channels: ["slack:#approvals", "web"]\n'
EDIT_POLICY = POLICY.replace(RULE_END, RULE_END + "    editable: [quantity, price]\n")
QUORUM_EDIT_POLICY = EDIT_POLICY.replace(RULE_END, RULE_END + "    quorum: 2\n")
GRANT_POLICY = POLICY.replace(RULE_END, RULE_END + "    grant: {max: 30m, max_calls: 3}\n")


def click(approval_id: str, user: str, action: str, value: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0FAKE"},
        "trigger_id": f"trigger-{approval_id}-{user}",
        "channel": {"id": "C0APPROVALS", "name": "approvals"},
        "actions": [
            {
                "type": "button",
                "block_id": "decision",
                "action_id": f"{action}:{approval_id}",
                "value": value,
                "action_ts": str(time.time()),
            }
        ],
    }


def edit_submission(
    view: dict[str, Any], user: str, texts: dict[str, str], reason: str | None
) -> dict[str, Any]:
    """What Slack sends back for the modal `view` the broker opened, with `texts` typed in."""
    values: dict[str, Any] = {
        f"edit.{name}": {"value": {"type": "plain_text_input", "value": text}} for name, text in texts.items()
    }
    values["reason"] = {"reason": {"type": "plain_text_input", "value": reason}}
    return {
        "type": "view_submission",
        "user": {"id": user, "username": user.lower(), "team_id": "T0FAKE"},
        "view": {
            "id": "V0EDIT",
            "type": "modal",
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "state": {"values": values},
        },
    }


def buttons(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (actions,) = [block for block in blocks if block["type"] == "actions"]
    return {element["action_id"].split(":")[0]: element for element in actions["elements"]}


async def held(rig: SlackRig, arguments: dict[str, Any] = BIG_ORDER) -> Approval:
    """An approval opened the way the proxy opens it, under the policy in force."""
    decision = rig.broker.policy_file.holder.current.decide(
        "place_order", server="exchange", agent="trader", arguments=arguments
    )
    assert decision.approval is not None
    return await rig.open_approval(
        rule=decision.rule,
        policy_revision=decision.revision,
        editable=decision.approval.editable,
        quorum=decision.approval.quorum,
    )


async def open_modal(rig: SlackRig, approval: Approval, user: str) -> dict[str, Any]:
    message = await rig.message_of(approval)
    edit = buttons(message.blocks)["broker_edit"]
    before = len(rig.fake.calls_to("views.open"))
    response = await rig.post_interaction(click(approval.id, user, "broker_edit", edit["value"]))
    assert response.status_code == 200
    opened = await rig.fake.wait_for_call("views.open", before + 1)
    view: dict[str, Any] = opened[-1].params["view"]
    return view


async def ephemeral(fake: FakeSlack, count: int) -> str:
    calls = await fake.wait_for_call("chat.postEphemeral", count)
    text: str = calls[count - 1].params["text"]
    return text


async def test_an_edit_in_the_modal_approves_the_edited_call(tmp_path: Path) -> None:
    async with (
        FakeSlack() as fake,
        slack_broker(tmp_path, fake, servers=exchange_server(), policy=EDIT_POLICY) as rig,
    ):
        with anyio.fail_after(40):
            async with rig.running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await rig.feed.opened.receive()
                message = await rig.message_of(approval)
                shown = buttons(message.blocks)
                assert shown["broker_approve"]["value"] == approval.arguments_hash
                assert shown["broker_edit"]["text"]["text"] == "Approve with edits…"
                assert "broker_grant" not in shown  # the rule has no grant setting

                view = await open_modal(rig, approval, SLACK_USERS["alice"])
                inputs = [block for block in view["blocks"] if block["type"] == "input"]
                assert [(block["block_id"], block["element"].get("initial_value")) for block in inputs] == [
                    ("edit.quantity", "10"),
                    ("edit.price", "90000"),
                    ("reason", None),
                ]
                assert json.loads(view["private_metadata"])["seen_hash"] == approval.arguments_hash
                stored = await rig.broker.store.get(approval.id)
                assert stored is not None and stored.status is ApprovalStatus.PENDING

                submitted = await rig.post_interaction(
                    edit_submission(
                        view, SLACK_USERS["alice"], {"quantity": "6", "price": "90000"}, "too big"
                    )
                )
                assert submitted.status_code == 200
            result = outcome["result"]
            assert not result.is_error
            assert result.content[0].text.startswith(
                "A human (alice) changed the arguments before approving: quantity 10 -> 6."
            )
            assert result.structured_content["quantity"] == 6  # what the upstream ran
            done = await rig.message_saying(approval, "Completed OK")
            assert "quantity  6" in json.dumps(done.blocks)  # the message shows the edited arguments
            decided = await rig.broker.store.get(approval.id)
            assert decided is not None and decided.decided_via == "slack"
            assert decided.decision_reason == "too big"


async def test_a_refused_edit_answers_privately_and_changes_nothing(tmp_path: Path) -> None:
    async with (
        FakeSlack() as fake,
        slack_broker(tmp_path, fake, servers=exchange_server(), policy=EDIT_POLICY) as rig,
    ):
        with anyio.fail_after(30):
            approval = await held(rig)
            view = await open_modal(rig, approval, SLACK_USERS["bob"])
            # quantity 3 falls to the allow rule: the policy refuses the edit, naming that rule.
            await rig.post_interaction(edit_submission(view, SLACK_USERS["bob"], {"quantity": "3"}, None))
            said = await ephemeral(fake, 1)
            assert said.startswith(
                ":no_entry_sign: Your edit was refused: the edited call would be decided by rule"
            )
            assert said.endswith("Nothing was decided.")
            # Text that is not JSON in a number field stays text; the tool's inputSchema refuses it.
            await rig.post_interaction(edit_submission(view, SLACK_USERS["bob"], {"price": "cheap"}, None))
            said = await ephemeral(fake, 2)
            assert "Your edit was refused: 'price': must be number, got string" in said
            unchanged = await rig.broker.store.get(approval.id)
            assert unchanged is not None and unchanged.status is ApprovalStatus.PENDING
            assert unchanged.arguments == BIG_ORDER and unchanged.arguments_hash == approval.arguments_hash
            # Someone without an approver account cannot even open the modal.
            before = len(fake.calls_to("views.open"))
            await rig.post_interaction(
                click(approval.id, SLACK_USERS["mallory"], "broker_edit", approval.arguments_hash)
            )
            said = await ephemeral(fake, 3)
            assert said.startswith(":no_entry_sign: You may not edit this")
            assert len(fake.calls_to("views.open")) == before


async def test_a_plain_approve_shown_before_an_edit_is_refused(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, policy=QUORUM_EDIT_POLICY) as rig:
        with anyio.fail_after(30):
            approval = await held(rig)
            old = buttons((await rig.message_of(approval)).blocks)["broker_approve"]["value"]
            view = await open_modal(rig, approval, SLACK_USERS["alice"])
            await rig.post_interaction(edit_submission(view, SLACK_USERS["alice"], {"quantity": "7"}, None))
            edited = await rig.message_saying(approval, "quantity  7")
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING  # one of two votes
            assert stored.arguments["quantity"] == 7
            assert buttons(edited.blocks)["broker_approve"]["value"] == stored.arguments_hash != old

            assert await ephemeral(fake, 1) == "Your approval is recorded; 1 of 2 approvals: alice."
            await rig.post_interaction(click(approval.id, SLACK_USERS["bob"], "broker_approve", old))
            said = await ephemeral(fake, 2)
            assert "the arguments were edited since this message was posted; look again" in said.lower()
            still = await rig.broker.store.get(approval.id)
            assert still is not None and still.status is ApprovalStatus.PENDING

            await rig.post_interaction(
                click(approval.id, SLACK_USERS["bob"], "broker_approve", stored.arguments_hash)
            )
            await rig.message_saying(approval, "2 of 2 approvals: alice, bob")


async def test_the_grant_button_approves_and_makes_a_grant(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, policy=GRANT_POLICY) as rig:
        with anyio.fail_after(30):
            approval = await held(rig)
            shown = buttons((await rig.message_of(approval)).blocks)
            grant = shown["broker_grant"]
            assert grant["text"]["text"] == "Approve + allow for 30 min"
            assert "broker_edit" not in shown  # the rule lists no editable arguments
            response = await rig.post_interaction(
                click(approval.id, SLACK_USERS["alice"], "broker_grant", grant["value"])
            )
            assert response.status_code == 200
            await rig.message_saying(approval, "*Approved* by <@U0ALICE>")
            async with rig.running.approver("bob") as bob:
                listed = (await bob.get("/api/grants")).json()["grants"]
            assert [(g["summary"], g["created_by"], g["state"]) for g in listed] == [
                ("grant for 30 min (3 calls, identical)", ["alice"], "active")
            ]
            assert fake.calls_to("chat.postEphemeral") == []
