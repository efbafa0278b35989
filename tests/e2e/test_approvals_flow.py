"""Held calls end to end: a real agent client, the broker, the demo exchange, and decisions over the API."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from broker.approvals import Approval, ApprovalStatus, NewApproval
from tests.e2e.harness import RawSession, RunningBroker, exchange_server, make_settings, running_broker

pytestmark = pytest.mark.anyio

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
  - tool: binance_us_cust_cancel_order
    action: require_approval
    timeout: 60
  - tool: get_balances
    action: require_approval
    timeout: 1
    reason: "short fuse"
"""
BIG_ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000}


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


class ApprovalFeed:
    """Sees every approval the broker opens or changes, so tests wait on events, not on time."""

    def __init__(self) -> None:
        self._send: MemoryObjectSendStream[Approval]
        self.opened: MemoryObjectReceiveStream[Approval]
        self._send, self.opened = anyio.create_memory_object_stream[Approval](100)
        self.updates: list[Approval] = []

    async def approval_opened(self, approval: Approval) -> None:
        await self._send.send(approval)

    async def approval_updated(self, approval: Approval) -> None:
        self.updates.append(approval)


def watch(running: RunningBroker) -> ApprovalFeed:
    feed = ApprovalFeed()
    running.broker.approvals.add_listener(feed)
    return feed


async def test_an_approved_call_is_released_once_and_the_agent_gets_the_upstream_result(
    tmp_path: Path,
) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await feed.opened.receive()
                assert approval.tool == "place_order" and approval.arguments == BIG_ORDER
                async with running.approver("alice") as alice:
                    listed = (await alice.get("/api/approvals", params={"status": "pending"})).json()[
                        "approvals"
                    ]
                    assert [item["id"] for item in listed] == [approval.id]
                    assert listed[0]["can_decide"] is True
                    decided = await alice.post(
                        f"/api/approvals/{approval.id}/approve", json={"reason": "looks fine"}
                    )
                    assert decided.status_code == 200, decided.text
            result = outcome["result"]
            assert not result.is_error
            assert result.structured_content["quantity"] == 10
            assert result.structured_content["status"] == "open"
            async with running.approver("bob") as bob:
                shown = (await bob.get(f"/api/approvals/{approval.id}")).json()
            assert shown["status"] == "completed"
            events = [entry["event"] for entry in shown["audit"]]
            assert events == ["requested", "approved", "released", "completed", "delivered"]
            assert shown["audit"][1]["actor"] == "alice"


async def test_a_denial_reaches_the_agent_with_the_reason_and_nothing_is_forwarded(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await feed.opened.receive()
                async with running.approver("bob") as bob:
                    denied = await bob.post(
                        f"/api/approvals/{approval.id}/deny", json={"reason": "too large today"}
                    )
                    assert denied.status_code == 200
                    again = await bob.post(f"/api/approvals/{approval.id}/approve")
                    assert again.status_code == 409
                    assert "already denied: decided by bob via api" in again.json()["detail"]["message"]
            text = text_of(outcome["result"])
            assert outcome["result"].is_error
            assert "Denied by a human: bob denied" in text and "too large today" in text
            async with running.client() as client:
                orders = await client.call_tool(
                    "place_order", {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": 1}
                )
                assert (
                    orders.structured_content["order_id"] == "ord-1001"
                )  # the denied order never reached the exchange


async def test_only_the_rules_approvers_may_decide(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "place_order", BIG_ORDER)
                approval = await feed.opened.receive()
                async with running.approver("mallory") as mallory, running.raw("trader") as agent_http:
                    refused = await mallory.post(f"/api/approvals/{approval.id}/approve")
                    assert refused.status_code == 403
                    assert "not an approver" in refused.json()["detail"]
                    # An agent's key is not an approver token.
                    as_agent = await agent_http.post(f"/api/approvals/{approval.id}/approve")
                    assert as_agent.status_code == 401
                    assert as_agent.json()["detail"].startswith("unknown approver token")
                    anonymous = await agent_http.post(
                        f"/api/approvals/{approval.id}/approve", headers={"Authorization": ""}
                    )
                    assert anonymous.json()["detail"].startswith("an approver token is required")
                    missing = await mallory.post("/api/approvals/nope/approve")
                    assert missing.status_code == 404
                async with running.approver("alice") as alice:
                    assert (await alice.post(f"/api/approvals/{approval.id}/deny")).status_code == 200


async def test_an_unanswered_call_expires_and_says_so(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client:
                result = await client.call_tool("get_balances", {})
            assert result.is_error
            assert text_of(result).startswith("Expired: nobody approved the call to 'get_balances'")
            assert "not denied by a human" in text_of(result)
            assert (await feed.opened.receive()).tool == "get_balances"
            assert [update.status for update in feed.updates] == [ApprovalStatus.EXPIRED]


async def test_progress_keeps_a_waiting_agent_informed(tmp_path: Path) -> None:
    messages: list[str] = []
    two_updates = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")
        if len(messages) >= 2:
            two_updates.set()

    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool(
                        "place_order", BIG_ORDER, progress_callback=on_progress
                    )

                tasks.start_soon(agent)
                approval = await feed.opened.receive()
                await two_updates.wait()
                async with running.approver("alice") as alice:
                    await alice.post(f"/api/approvals/{approval.id}/approve")
            assert not outcome["result"].is_error
            assert all("Waiting for human approval of 'place_order'" in message for message in messages[:2])
            assert approval.id in messages[0]


async def test_past_the_hold_budget_the_agent_can_come_back_for_the_result(tmp_path: Path) -> None:
    from dataclasses import replace

    settings = make_settings(tmp_path, POLICY, exchange_server())
    settings = replace(settings, approvals=replace(settings.approvals, hold_budget=0.3))
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                pending = await client.call_tool("place_order", BIG_ORDER)
                assert pending.is_error and text_of(pending).startswith("PENDING HUMAN APPROVAL")
                approval_id = pending.meta["io.github.mcp-approval-broker/approval"]["approvalId"]
                again = await client.call_tool("place_order", BIG_ORDER)
                assert again.meta["io.github.mcp-approval-broker/approval"]["approvalId"] == approval_id
                checked = await client.call_tool("check_approval", {"approval_id": approval_id})
                assert "PENDING HUMAN APPROVAL" in text_of(checked)
                async with running.approver("alice") as alice:
                    assert (await alice.post(f"/api/approvals/{approval_id}/approve")).status_code == 200
                done = await client.call_tool("place_order", BIG_ORDER)
                while text_of(done).startswith(
                    "APPROVED, RUNNING"
                ):  # released but the upstream has not answered yet
                    done = await client.call_tool("place_order", BIG_ORDER)
                assert not done.is_error and done.structured_content["quantity"] == 10
                fresh = await client.call_tool("place_order", BIG_ORDER)
                assert fresh.meta["io.github.mcp-approval-broker/approval"]["approvalId"] != approval_id
            async with running.client("auditor") as other_agent:
                foreign = await other_agent.call_tool("check_approval", {"approval_id": approval_id})
                assert foreign.is_error and "No approval" in text_of(foreign)


async def test_held_calls_can_be_awaited_as_mcp_tasks(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            async with running.raw() as http:
                raw = RawSession(http)
                opened = await raw.open()
                assert opened["capabilities"]["tasks"]["requests"]["tools"]["call"] == {}
                rpc = raw.rpc

                created = await rpc(
                    2, "tools/call", {"name": "place_order", "arguments": BIG_ORDER, "task": {"ttl": 60000}}
                )
                task = created["result"]["task"]
                assert task["status"] == "working" and "waiting for human approval" in task["statusMessage"]
                listed = await rpc(3, "tasks/list", {})
                assert [t["taskId"] for t in listed["result"]["tasks"]] == [task["taskId"]]
                approval = await running.broker.approvals.store.get_by_task(task["taskId"])
                assert approval is not None
                async with running.approver("alice") as alice:
                    await alice.post(f"/api/approvals/{approval.id}/approve")
                result = await rpc(4, "tasks/result", {"taskId": task["taskId"]})
                assert result["result"]["structuredContent"]["quantity"] == 10
                assert result["result"]["_meta"]["io.modelcontextprotocol/related-task"] == {
                    "taskId": task["taskId"]
                }
                status = await rpc(5, "tasks/get", {"taskId": task["taskId"]})
                assert status["result"]["status"] == "completed"

                second = await rpc(
                    6,
                    "tools/call",
                    {"name": "binance_us_cust_cancel_order", "arguments": {"order_id": "x"}, "task": {}},
                )
                cancelled = await rpc(7, "tasks/cancel", {"taskId": second["result"]["task"]["taskId"]})
                assert cancelled["result"]["status"] == "cancelled"
                again = await rpc(8, "tasks/cancel", {"taskId": second["result"]["task"]["taskId"]})
                assert again["error"]["code"] == -32602 and "already cancelled" in again["error"]["message"]
                third = await rpc(
                    12,
                    "tools/call",
                    {"name": "binance_us_cust_cancel_order", "arguments": {"order_id": "y"}, "task": {}},
                )
                denied_task = third["result"]["task"]["taskId"]
                held = await running.broker.approvals.store.get_by_task(denied_task)
                assert held is not None
                async with running.approver("alice") as alice:
                    await alice.post(f"/api/approvals/{held.id}/deny", json={"reason": "not today"})
                # SDKs that show only the task's status still tell the model who said no and why
                refused = await rpc(13, "tasks/get", {"taskId": denied_task})
                assert refused["result"]["status"] == "failed"
                assert refused["result"]["statusMessage"] == "denied by alice via api: not today"
                unknown = await rpc(9, "tasks/get", {"taskId": "nope"})
                assert unknown["error"]["code"] == -32602
                # A small order is allowed and forwarded as it is, so it cannot be a task; the listing
                # offers no task support for place_order either, since most calls to it are not held.
                small = {**BIG_ORDER, "quantity": 1}
                untasked = await rpc(
                    10, "tools/call", {"name": "place_order", "arguments": small, "task": {}}
                )
                assert untasked["error"]["code"] == -32601
                listed = await rpc(11, "tools/list", {})
                offered = {tool["name"]: tool.get("execution") for tool in listed["result"]["tools"]}
                assert offered["place_order"] is None
                assert offered["binance_us_cust_cancel_order"] == {"taskSupport": "optional"}


def task_call(agent: str, number: int, *, task: bool) -> NewApproval:
    return NewApproval(
        agent=agent,
        server="exchange",
        tool="binance_us_cust_cancel_order",
        upstream_tool="binance_us_cust_cancel_order",
        arguments={"order_id": f"ord-{number}"},
        policy_revision="r-test",
        rule="rules[2] 'binance_us_cust_cancel_order'",
        rule_reason="cancels need a human",
        timeout=timedelta(minutes=5),
        task_id=f"task-{agent}-{number}" if task else None,
    )


async def test_tasks_list_and_the_api_page_with_cursors(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        service = running.broker.approvals
        for number in range(103):
            await service.open(task_call("trader", number, task=True))
            if number % 20 == 0:
                await service.open(task_call("trader", 1000 + number, task=False))
                await service.open(task_call("auditor", number, task=True))
        with anyio.fail_after(30):
            async with running.raw() as http:
                raw = RawSession(http)
                await raw.open()
                first = (await raw.rpc(1, "tasks/list", {}))["result"]
                second = (await raw.rpc(2, "tasks/list", {"cursor": first["nextCursor"]}))["result"]
                forged = await raw.rpc(3, "tasks/list", {"cursor": "not-one-of-ours"})
            async with running.approver("alice") as alice:
                page = (await alice.get("/api/approvals", params={"limit": 100})).json()
                rest = (await alice.get("/api/approvals", params={"cursor": page["next_cursor"]})).json()
                bad_cursor = await alice.get("/api/approvals", params={"cursor": "x"})
                edge = await alice.get("/api/approvals", params={"before": "0001-01-01T00:00:00+01:00"})

    everything = [approval["id"] for approval in page["approvals"] + rest["approvals"]]
    assert len(everything) == len(set(everything)) == 103 + 2 * 6 and "next_cursor" not in rest
    assert bad_cursor.status_code == 422 and "not a cursor" in bad_cursor.text
    assert edge.status_code == 422 and "outside the range" in edge.text
    listed = [task["taskId"] for task in first["tasks"] + second["tasks"]]
    assert len(first["tasks"]) == 100 and "nextCursor" not in second
    assert listed == [f"task-trader-{number}" for number in reversed(range(103))]
    assert forged["error"]["code"] == -32602 and "not a cursor" in forged["error"]["message"]


async def test_a_reason_the_store_cannot_keep_is_refused_with_422(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "place_order", BIG_ORDER)
                approval = await feed.opened.receive()
                async with running.approver("alice") as alice:
                    refused = await alice.post(
                        f"/api/approvals/{approval.id}/deny", json={"reason": "bad\u0000reason"}
                    )
                    assert refused.status_code == 422 and "NUL" in refused.text
                    assert (await alice.get("/api/approvals/a%00b")).status_code == 404
                    assert (await alice.get("/api/approvals", params={"agent": "a\u0000"})).json() == {
                        "approvals": []
                    }
                    assert (await alice.post(f"/api/approvals/{approval.id}/deny")).status_code == 200
