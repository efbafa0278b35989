"""Socket Mode: the broker connects out to Slack, and the interactions it receives there go
through the same handler as the HTTP request URL."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from tests.slack.fake_slack import APP_TOKEN, FakeSlack
from tests.slack.rig import SLACK_USERS, block_actions, deny_submission, slack_broker

pytestmark = pytest.mark.anyio


async def test_clicks_over_socket_mode_are_acknowledged_and_decide(tmp_path: Path) -> None:
    async with (
        FakeSlack() as fake,
        slack_broker(tmp_path, fake, mode="socket", app_token=APP_TOKEN, signing_secret=None) as rig,
    ):
        with anyio.fail_after(20):
            assert (await rig.http.post("/slack/interactions", content=b"payload=%7B%7D")).status_code == 404
            (connection,) = await fake.wait_for_call("apps.connections.open")
            assert connection.token == APP_TOKEN

            approved = await rig.open_approval(arguments={"n": 1})
            await rig.message_of(approved)
            await fake.push_envelope(
                {
                    "envelope_id": "env-1",
                    "type": "interactive",
                    "accepts_response_payload": False,
                    "payload": block_actions(approved.id, SLACK_USERS["alice"], approve=True),
                }
            )
            await fake.wait_for(lambda: {"envelope_id": "env-1"} in fake.socket_received)
            await rig.message_saying(approved, "*Approved* by <@U0ALICE>")

            denied = await rig.open_approval(arguments={"n": 2})
            await rig.message_of(denied)
            await fake.push_envelope(
                {
                    "envelope_id": "env-2",
                    "type": "interactive",
                    "payload": block_actions(denied.id, SLACK_USERS["mallory"], approve=False),
                }
            )
            (refused,) = await fake.wait_for_call("chat.postEphemeral")
            assert "You may not deny this" in refused.params["text"]
            await fake.push_envelope(
                {
                    "envelope_id": "env-3",
                    "type": "interactive",
                    "payload": deny_submission(denied.id, "U0BOB", "no"),
                }
            )
            await rig.message_saying(denied, "*Denied* by <@U0BOB>")
            stored = await rig.broker.store.get(denied.id)
            assert (
                stored is not None
                and stored.status is ApprovalStatus.DENIED
                and stored.decided_via == "slack"
            )
            assert {"envelope_id": "env-2"} in fake.socket_received
