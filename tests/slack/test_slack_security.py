"""Fail closed: only requests Slack signed, recently, reach the approval service."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from broker.channels.slack.errors import UnverifiedRequest
from broker.channels.slack.signing import RequestVerifier, slack_signature
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import SIGNING_SECRET, SLACK_USERS, SlackRig, block_actions, slack_broker

pytestmark = pytest.mark.anyio


async def assert_untouched(rig: SlackRig, approval_id: str) -> None:
    stored = await rig.broker.store.get(approval_id)
    assert stored is not None and stored.status is ApprovalStatus.PENDING and stored.decided_by is None
    trail = [record.event for record in await rig.broker.store.audit_trail(approval_id)]
    assert trail == ["requested", "notified"]
    assert [call.method for call in rig.fake.calls] == ["chat.postMessage"]


async def test_forged_stale_and_unsigned_requests_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            await fake.wait_for_call("chat.postMessage")
            click = block_actions(approval.id, SLACK_USERS["alice"], approve=True)

            forged = await rig.post_interaction(click, secret="not-the-signing-secret")
            assert forged.status_code == 401
            assert "does not match" in forged.json()["error"]

            stale = await rig.post_interaction(click, timestamp=int(time.time()) - 6 * 60)
            assert stale.status_code == 401 and "stale" in stale.json()["error"]
            future = await rig.post_interaction(click, timestamp=int(time.time()) + 6 * 60)
            assert future.status_code == 401

            unsigned = await rig.http.post("/slack/interactions", content=b"payload=%7B%7D")
            assert unsigned.status_code == 401

            # A signature is only good for its own body: replaying it over another body fails.
            stamp = str(int(time.time()))
            signed_for = slack_signature(SIGNING_SECRET, stamp, b"payload=%7B%7D")
            swapped = await rig.http.post(
                "/slack/interactions",
                content=b"payload=" + bytes(str(click).encode()),
                headers={"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signed_for},
            )
            assert swapped.status_code == 401

            await assert_untouched(rig, approval.id)


async def test_a_verified_but_malformed_interaction_is_refused(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(20):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            not_a_form = await rig.post_interaction({}, body=b"\xff\xfe")
            assert not_a_form.status_code == 400
            not_json = await rig.post_interaction({}, body=b"payload=%7Bnope")
            assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
            no_user = dict(block_actions(approval.id, "U0ALICE", approve=True))
            del no_user["user"]
            assert (await rig.post_interaction(no_user)).status_code == 400
            # Other apps' interactions (and shortcuts the broker does not offer) are acknowledged and ignored.
            assert (
                await rig.post_interaction({"type": "shortcut", "user": {"id": "U0ALICE"}})
            ).status_code == 200
            await assert_untouched(rig, approval.id)


def test_the_verifier_follows_slacks_signing_scheme() -> None:
    # The worked example from Slack's "Verifying requests from Slack" guide.
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
        b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
        b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
        b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert slack_signature(SIGNING_SECRET, "1531420618", body) == expected
    verifier = RequestVerifier(SIGNING_SECRET, wall_clock=lambda: 1531420618 + 299)
    verified = verifier.verify(timestamp="1531420618", signature=expected, body=body)
    # Remembered for the window plus a margin for replicas whose clocks lag.
    assert verified.expires_at == datetime.fromtimestamp(1531420618 + 300 + 300, tz=UTC)
    assert len(verified.digest) == 64 and verified.digest not in expected
    early = RequestVerifier(SIGNING_SECRET, wall_clock=lambda: 1531420618 - 200)
    assert early.verify(timestamp="1531420618", signature=expected, body=body) == verified
    late = RequestVerifier(SIGNING_SECRET, wall_clock=lambda: 1531420618 + 301)
    with pytest.raises(UnverifiedRequest, match="stale"):
        late.verify(timestamp="1531420618", signature=expected, body=body)
    with pytest.raises(UnverifiedRequest, match="not a Unix time"):
        verifier.verify(timestamp="yesterday", signature=expected, body=body)
    with pytest.raises(ValueError, match="signing secret"):
        RequestVerifier("")
