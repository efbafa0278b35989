"""A real broker wired to the fake Slack, and Slack's side of an interaction: signed payloads."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from broker.app import Broker
from broker.approvals import Approval, NewApproval
from broker.approvals.clock import Clock, utc_now
from broker.channels.delivery.retry import Sleep
from broker.channels.slack.signing import slack_signature
from broker.config.slack import SlackSettings
from tests.e2e.harness import RunningBroker, approver_accounts, make_settings, serve_asgi
from tests.slack.fake_slack import APP_TOKEN, BOT_TOKEN, FakeSlack, Message

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_USERS = {"alice": "U0ALICE", "bob": "U0BOB", "mallory": "U0MALLORY"}
"""Approver name -> Slack user id (alice and bob lead trading; mallory approves nothing)."""
RISK_GROUP = "S0RISK"
RISK_MEMBER = "U0CAROL"
"""In the Slack user group S0RISK, without a broker approver account."""

POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: allow
  - tool: place_order
    when: {"args.quantity": {"gt": 5}}
    action: require_approval
    timeout: 60
    approvers: ["@trading-leads"]
    channels: ["slack:#approvals", "web"]
  - tool: binance_us_cust_cancel_order
    action: require_approval
    timeout: 60
"""
BIG_ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000}


class ApprovalFeed:
    """Every approval the broker opens, so tests wait on events rather than time."""

    def __init__(self) -> None:
        self._send: MemoryObjectSendStream[Approval]
        self.opened: MemoryObjectReceiveStream[Approval]
        self._send, self.opened = anyio.create_memory_object_stream[Approval](100)

    async def approval_opened(self, approval: Approval) -> None:
        await self._send.send(approval)

    async def approval_updated(self, approval: Approval) -> None:
        return None


class ControlledSleep:
    """Stands in for the Slack channel's sleep: records each delay; returns at once unless held."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._released = anyio.Event()
        self._released.set()
        self._asked = anyio.Event()

    def hold(self) -> None:
        self._released = anyio.Event()

    def release(self) -> None:
        self._released.set()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._asked.set()
        self._asked = anyio.Event()
        await self._released.wait()

    async def wait_for_sleeps(self, count: int) -> None:
        while len(self.delays) < count:
            await self._asked.wait()


@dataclass
class SlackRig:
    running: RunningBroker
    fake: FakeSlack
    feed: ApprovalFeed
    http: httpx2.AsyncClient

    @property
    def broker(self) -> Broker:
        return self.running.broker

    async def open_approval(self, **overrides: Any) -> Approval:
        """Parks a call the way the proxy does, for tests about Slack rather than the agent's side."""
        fields: dict[str, Any] = {
            "agent": "trader",
            "server": "exchange",
            "tool": "place_order",
            "upstream_tool": "place_order",
            "arguments": BIG_ORDER,
            "policy_revision": "test-revision",
            "rule": "rules[1]",
            "rule_reason": "orders above 5 units need a second pair of eyes",
            "timeout": timedelta(seconds=60),
            "approvers": ("@trading-leads",),
            "channels": ("slack:#approvals", "web"),
        }
        fields.update(overrides)
        approval, created = await self.broker.approvals.open(NewApproval(**fields))
        assert created
        return approval

    async def message_of(self, approval: Approval) -> Message:
        """The Slack message the broker posted for `approval`, once it is there."""

        def posted() -> Message | None:
            return next(
                (m for m in self.fake.messages.values() if approval.id in json.dumps(m.history[0]["blocks"])),
                None,
            )

        message = await self.fake.wait_for(posted)
        # The post is done once its bookkeeping (channel and ts on the approval, the audit) is.
        assert self.broker.slack is not None
        await self.broker.slack.notifier.settled(approval.id)
        return message

    async def message_saying(self, approval: Approval, words: str) -> Message:
        """The approval's message once its current version contains `words`."""
        message = await self.message_of(approval)
        await self.fake.wait_for(lambda: words in json.dumps(message.blocks))
        return message

    async def click(self, approval_id: str, user: str, *, approve: bool) -> httpx2.Response:
        return await self.post_interaction(block_actions(approval_id, user, approve=approve))

    async def submit_denial(self, approval_id: str, user: str, reason: str | None) -> httpx2.Response:
        return await self.post_interaction(deny_submission(approval_id, user, reason))

    async def post_interaction(
        self,
        payload: Mapping[str, Any],
        *,
        timestamp: int | None = None,
        secret: str = SIGNING_SECRET,
        body: bytes | None = None,
    ) -> httpx2.Response:
        """Posts `payload` exactly as Slack does: form-encoded, timestamped and signed."""
        raw = body if body is not None else urlencode({"payload": json.dumps(payload)}).encode()
        stamp = str(timestamp if timestamp is not None else int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack_signature(secret, stamp, raw),
        }
        return await self.http.post("/slack/interactions", content=raw, headers=headers)


def block_actions(
    approval_id: str, user: str, *, approve: bool, channel: str = "C0APPROVALS"
) -> dict[str, Any]:
    action = "broker_approve" if approve else "broker_deny"
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0FAKE"},
        "api_app_id": "A0BROKER",
        "trigger_id": f"trigger-{approval_id}-{user}",
        "channel": {"id": channel, "name": "approvals"},
        "container": {"type": "message", "channel_id": channel, "message_ts": "1700000000.000001"},
        "response_url": "https://hooks.slack.invalid/actions/T0FAKE/1/abc",
        "actions": [
            {
                "type": "button",
                "block_id": "decision",
                "action_id": f"{action}:{approval_id}",
                "value": approval_id,
                "action_ts": str(time.time()),
            }
        ],
    }


def deny_submission(
    approval_id: str, user: str, reason: str | None, *, channel: str = "C0APPROVALS"
) -> dict[str, Any]:
    return {
        "type": "view_submission",
        "user": {"id": user, "username": user.lower(), "team_id": "T0FAKE"},
        "view": {
            "id": "V0DENY",
            "type": "modal",
            "callback_id": "broker_deny_reason",
            "private_metadata": json.dumps({"approval_id": approval_id, "channel": channel}),
            "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
        },
    }


def slack_settings(fake: FakeSlack, **overrides: Any) -> SlackSettings:
    settings = SlackSettings(
        bot_token=BOT_TOKEN,
        signing_secret=SIGNING_SECRET,
        default_channel="#approvals",
        base_url=fake.base_url,
        user_groups={"risk-officers": RISK_GROUP},
    )
    return replace(settings, **overrides)


def slack_approvers() -> tuple[Any, ...]:
    return tuple(replace(account, slack_user=SLACK_USERS[account.name]) for account in approver_accounts())


@asynccontextmanager
async def slack_broker(
    tmp_path: Path,
    fake: FakeSlack,
    *,
    servers: Mapping[str, Any] | None = None,
    policy: str = POLICY,
    sleep: Sleep = anyio.sleep,
    database_url: str | None = None,
    clock: Clock = utc_now,
    **slack: Any,
) -> AsyncIterator[SlackRig]:
    """A real broker (real store, real uvicorn socket) whose Slack channel talks to `fake`.

    Without `servers` it has no upstreams, which is quicker and enough for tests about Slack;
    approvals then come from `SlackRig.open_approval`. Brokers given one `database_url` are
    replicas of each other.
    """
    settings = make_settings(
        tmp_path,
        policy,
        servers or {},
        approvers=slack_approvers(),
        slack=slack_settings(fake, **slack),
    )
    if database_url is not None:
        settings = replace(settings, database_url=database_url)
    broker = Broker(settings, environ=dict(os.environ), slack_sleep=sleep, clock=clock)
    feed = ApprovalFeed()
    broker.approvals.add_listener(feed)
    async with broker.running(upstream_ready_timeout=30), serve_asgi(broker.asgi()) as url:
        try:
            async with httpx2.AsyncClient(base_url=url, timeout=30) as http:
                yield SlackRig(RunningBroker(broker, url), fake, feed, http)
        finally:
            broker.mcp_endpoint.shutdown()


__all__ = ["APP_TOKEN", "BIG_ORDER", "POLICY", "ControlledSleep", "FakeSlack", "SlackRig", "slack_broker"]
