"""The TypeScript SDK client waiting on held calls: progress that resets its timeout, and MCP tasks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from broker.approvals import ApprovalStatus
from tests.e2e.harness import AGENT_KEYS, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, POLICY, text_of, watch
from tests.e2e.test_node_peers import Step, pytestmark, run_node_client

__all__ = ["pytestmark"]


async def run_while_approving(
    running: Any, steps: list[Step], *, approve_after: float
) -> list[dict[str, Any]]:
    """Runs the TypeScript client; approves the first held call once it has waited `approve_after` seconds."""
    feed = watch(running)
    outcome: list[list[dict[str, Any]]] = []

    async def client() -> None:
        outcome.append(await run_node_client(f"{running.url}/mcp", steps, api_key=AGENT_KEYS["trader"]))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(client)
        approval = await feed.opened.receive()
        # Real time on purpose: what is tested is the client's own timeout against the broker's hold.
        await anyio.sleep(approve_after)
        async with running.approver("alice") as alice:
            response = await alice.post(f"/api/approvals/{approval.id}/approve")
            assert response.status_code == 200, response.text
    return outcome[0]


async def test_progress_keeps_a_typescript_client_waiting_past_its_timeout(tmp_path: Path) -> None:
    steps: list[Step] = [
        {
            "op": "call_tool",
            "name": "place_order",
            "arguments": BIG_ORDER,
            "timeoutMs": 1000,
            "resetTimeoutOnProgress": True,
            "progress": True,
        }
    ]
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        with anyio.fail_after(40):
            [call] = await run_while_approving(running, steps, approve_after=2.5)
    assert call["ok"], call
    assert call["result"]["structuredContent"]["quantity"] == 10
    assert len(call["progress"]) >= 5
    assert "Waiting for human approval" in call["progress"][0].get("message", "")


async def test_a_typescript_client_that_times_out_does_not_withdraw_its_call(tmp_path: Path) -> None:
    # The client's timeout sends notifications/cancelled ("Request timed out"): the client stopped
    # waiting, the agent did not change its mind. The call stays held and the identical call,
    # from another client process, collects the human's decision.
    timing_out: list[Step] = [
        {
            "op": "call_tool",
            "name": "place_order",
            "arguments": BIG_ORDER,
            "timeoutMs": 1000,
            "progress": True,
        }
    ]
    call: list[Step] = [
        {"op": "call_tool", "name": "place_order", "arguments": BIG_ORDER, "timeoutMs": 20000}
    ]
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        url, key = f"{running.url}/mcp", AGENT_KEYS["trader"]
        with anyio.fail_after(60):
            [timed_out] = await run_node_client(url, timing_out, api_key=key)
            approval = await feed.opened.receive()
            still = await running.broker.approvals.store.get(approval.id)
            async with running.approver("alice") as alice:
                assert (await alice.post(f"/api/approvals/{approval.id}/approve")).status_code == 200
            [came_back] = await run_node_client(url, call, api_key=key)
    assert not timed_out["ok"] and timed_out["error"]["code"] == -32001
    assert still is not None and still.status is ApprovalStatus.PENDING
    assert came_back["ok"] and came_back["result"]["structuredContent"]["quantity"] == 10, came_back


async def test_with_a_hold_budget_under_its_timeout_the_typescript_client_comes_back_for_the_result(
    tmp_path: Path,
) -> None:
    call: list[Step] = [{"op": "call_tool", "name": "place_order", "arguments": BIG_ORDER, "timeoutMs": 5000}]
    settings = make_settings(tmp_path, POLICY, exchange_server())
    settings = replace(settings, approvals=replace(settings.approvals, hold_budget=0.5))
    async with running_broker(settings) as running:
        feed = watch(running)
        url, key = f"{running.url}/mcp", AGENT_KEYS["trader"]
        with anyio.fail_after(40):
            [pending] = await run_node_client(url, call, api_key=key)
            approval = await feed.opened.receive()
            async with running.approver("alice") as alice:
                assert (await alice.post(f"/api/approvals/{approval.id}/approve")).status_code == 200
            # Another client process, another session: the identical call collects the result.
            [came_back] = await run_node_client(url, call, api_key=key)
    assert pending["ok"] and pending["result"]["isError"]
    assert text_of_result(pending["result"]).startswith("PENDING HUMAN APPROVAL")
    assert came_back["ok"] and came_back["result"]["structuredContent"]["quantity"] == 10, came_back


def text_of_result(result: dict[str, Any]) -> str:
    return " ".join(block.get("text", "") for block in result["content"])


async def test_the_typescript_client_awaits_a_held_call_as_a_task(tmp_path: Path) -> None:
    small_order = {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": 90000}
    steps: list[Step] = [
        {"op": "list_tools"},
        {"op": "call_tool", "name": "place_order", "arguments": small_order},
        {
            "op": "call_tool_stream",
            "name": "binance_us_cust_cancel_order",
            "arguments": {"order_id": "ord-1001"},
        },
    ]
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        with anyio.fail_after(40):
            listing, placed, stream = await run_while_approving(running, steps, approve_after=0.5)
    tools = {tool["name"]: tool for tool in listing["result"]["tools"]}
    # Only tools that always need a human are offered as tasks; a conditional rule may let the call through.
    assert tools["binance_us_cust_cancel_order"]["execution"] == {"taskSupport": "optional"}
    assert "execution" not in tools["place_order"]
    assert placed["result"]["structuredContent"]["order_id"] == "ord-1001"
    kinds = [message["type"] for message in stream["messages"]]
    assert kinds[0] == "taskCreated" and kinds[-1] == "result", stream
    assert "taskStatus" in kinds
    final = stream["messages"][-1]["result"]
    assert final["structuredContent"]["status"] == "cancelled", text_of(final)
