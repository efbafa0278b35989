"""Four-eyes approval end to end with the official Python SDK client: a quorum-2 call waits with
progress that names who approved, the pending answer and an identical re-call show the votes, MCP
tasks report them in tasks/get, and one person approving twice counts once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from broker.app import Broker
from broker.approvals import Approval
from broker.config.errors import ConfigError
from tests.e2e.harness import (
    APPROVER_TOKENS,
    FAST_APPROVALS,
    RawSession,
    RunningBroker,
    exchange_server,
    make_settings,
    running_broker,
)
from tests.e2e.test_approvals_cli import cli
from tests.e2e.test_approvals_flow import BIG_ORDER, text_of, watch

pytestmark = pytest.mark.anyio

QUORUM_POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    timeout: 60
    approvers: ["@trading-leads"]
    quorum: 2
"""


class VoteFeed:
    """Every change the broker announces, so a test waits for a vote to land instead of sleeping."""

    def __init__(self) -> None:
        self.seen: list[Approval] = []
        self._changed = anyio.Event()

    async def approval_opened(self, approval: Approval) -> None:
        self._record(approval)

    async def approval_updated(self, approval: Approval) -> None:
        self._record(approval)

    def _record(self, approval: Approval) -> None:
        self.seen.append(approval)
        self._changed.set()
        self._changed = anyio.Event()

    async def until_votes(self, count: int) -> Approval:
        while True:
            for approval in self.seen:
                if len(approval.votes) >= count:
                    return approval
            await self._changed.wait()


def feed_of(running: RunningBroker) -> VoteFeed:
    feed = VoteFeed()
    running.broker.approvals.add_listener(feed)
    return feed


async def approve(who: httpx2.AsyncClient, approval_id: str) -> dict[str, Any]:
    response = await who.post(f"/api/approvals/{approval_id}/approve")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_quorum_call_waits_with_progress_until_the_second_approver(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, QUORUM_POLICY, exchange_server())) as running:
        feed = feed_of(running)
        opened = watch(running)
        told_progress = anyio.Event()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            if "1 of 2 approvals (alice)" in (message or ""):
                told_progress.set()

        with anyio.fail_after(40):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool(
                        "place_order", BIG_ORDER, progress_callback=progress
                    )

                tasks.start_soon(agent)
                approval = await opened.opened.receive()
                async with running.approver("alice") as alice, running.approver("bob") as bob:
                    first = await approve(alice, approval.id)
                    assert first["status"] == "pending"
                    assert first["progress"] == "1 of 2 approvals: alice"
                    assert first["quorum"] == {"needed": 2, "have": 1, "from": [], "missing": []}
                    # The same person again (any channel) counts once.
                    again = await approve(alice, approval.id)
                    assert again["status"] == "pending" and again["quorum"]["have"] == 1
                    await feed.until_votes(1)
                    await told_progress.wait()  # progress notifications come every 0.2 s
                    decided = await approve(bob, approval.id)
                    assert decided["status"] == "approved" and decided["decided_by"] == "alice, bob"
            result = outcome["result"]
            assert not result.is_error and result.structured_content["quantity"] == 10
            async with running.approver("bob") as bob:
                shown = (await bob.get(f"/api/approvals/{approval.id}")).json()
            events = [entry["event"] for entry in shown["audit"]]
            assert events == [
                "requested",
                "voted",
                "voted",
                "voted",
                "approved",
                "released",
                "completed",
                "delivered",
            ]
            assert [vote["approver"] for vote in shown["votes"]] == ["alice", "bob"]


async def test_the_pending_answer_and_the_re_call_show_the_votes(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, QUORUM_POLICY, exchange_server(), approvals=replace(FAST_APPROVALS, hold_budget=0.3)
    )
    async with running_broker(settings) as running:
        feed = feed_of(running)
        with anyio.fail_after(40):
            async with running.client() as client:
                pending = await client.call_tool("place_order", BIG_ORDER)
                assert pending.is_error and text_of(pending).startswith("PENDING HUMAN APPROVAL")
                approval_id = pending.structured_content["approval_id"]
                async with running.approver("alice") as alice:
                    await approve(alice, approval_id)
                await feed.until_votes(1)
                again = await client.call_tool("place_order", BIG_ORDER)
                assert "It needs 2 distinct approvers; so far 1 of 2 approvals: alice." in text_of(again)
                async with running.approver("bob") as bob:
                    await approve(bob, approval_id)
                done = await client.call_tool("place_order", BIG_ORDER)
                while text_of(done).startswith("APPROVED, RUNNING"):
                    done = await client.call_tool("place_order", BIG_ORDER)
                assert not done.is_error and done.structured_content["quantity"] == 10


async def test_mcp_tasks_report_the_votes_in_tasks_get(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, QUORUM_POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            async with running.raw() as http:
                raw = RawSession(http)
                await raw.open()
                created = await raw.rpc(
                    2, "tools/call", {"name": "place_order", "arguments": BIG_ORDER, "task": {"ttl": 60000}}
                )
                task_id = created["result"]["task"]["taskId"]
                approval = await running.broker.approvals.store.get_by_task(task_id)
                assert approval is not None
                async with running.approver("alice") as alice:
                    await approve(alice, approval.id)
                status = await raw.rpc(3, "tasks/get", {"taskId": task_id})
                assert status["result"]["status"] == "working"
                assert status["result"]["statusMessage"].startswith(
                    "waiting for human approval: 1 of 2 approvals (alice) until "
                )
                async with running.approver("bob") as bob:
                    await approve(bob, approval.id)
                result = await raw.rpc(4, "tasks/result", {"taskId": task_id})
                assert result["result"]["structuredContent"]["quantity"] == 10


async def test_the_command_line_shows_the_votes(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, QUORUM_POLICY, exchange_server())) as running:
        opened = watch(running)

        def as_(name: str) -> list[str]:
            return ["--url", running.url, "--token", APPROVER_TOKENS[name]]

        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "place_order", BIG_ORDER)
                approval = await opened.opened.receive()
                code, out, err = await cli("approvals", "approve", approval.id, *as_("alice"))
                assert code == 0, err
                assert out.strip() == f"{approval.id}: vote recorded, still pending: 1 of 2 approvals: alice"
                code, out, _ = await cli("approvals", "list", *as_("bob"))
                assert "1 of 2 approvals: alice" in out
                code, out, _ = await cli("approvals", "show", approval.id, *as_("bob"))
                assert "progress: 1 of 2 approvals: alice" in out
                code, out, err = await cli("approvals", "approve", approval.id, *as_("bob"))
                assert code == 0, err
                assert out.strip() == f"{approval.id}: approved by alice, bob"


def test_a_quorum_the_configured_approvers_cannot_reach_stops_the_broker(tmp_path: Path) -> None:
    policy = QUORUM_POLICY.replace("quorum: 2", "quorum: 3")
    with pytest.raises(ConfigError, match=r"policy\.yaml:5: rule rules\[0\] 'place_order': quorum needs 3"):
        Broker(make_settings(tmp_path, policy, exchange_server()), environ={})
