"""An agent that withdraws a held call withdraws its approval; one that merely loses its connection does not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.approvals import Approval, ApprovalStatus
from tests.e2e.harness import RawSession, RunningBroker, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, POLICY, watch
from tests.proxy.test_session_end import cancelled

pytestmark = pytest.mark.anyio


async def until_no_agent_waits(running: RunningBroker, *, but: int = 0) -> None:
    # The broker announces no event when a waiter leaves; the callers bound this with fail_after.
    while running.broker.approvals.held_calls > but:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def assert_withdrawn(running: RunningBroker, approval: Approval) -> None:
    cancelled = await running.broker.approvals.wait(approval.id, 10)
    assert cancelled.status is ApprovalStatus.CANCELLED
    assert (cancelled.decided_by, cancelled.decided_via) == ("trader", "agent")
    async with running.approver("alice") as alice:
        late = await alice.post(f"/api/approvals/{approval.id}/approve")
    assert late.status_code == 409 and "already cancelled" in late.json()["detail"]["message"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_agent_that_cancels_its_held_call_withdraws_the_approval(tmp_path: Path, mode: str) -> None:
    # legacy: the SDK client sends notifications/cancelled; auto (2026-07-28): it closes the stream.
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client(mode=mode) as client:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(client.call_tool, "place_order", BIG_ORDER)
                    approval = await feed.opened.receive()
                    tasks.cancel_scope.cancel()
                await assert_withdrawn(running, approval)
                # Nothing reached the exchange: the next order still gets the first order id.
                placed = await client.call_tool(
                    "place_order", {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": 1}
                )
                assert placed.structured_content["order_id"] == "ord-1001"


async def test_ending_the_session_withdraws_the_calls_it_waits_on(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.raw() as http, anyio.create_task_group() as tasks:
                raw = RawSession(http)
                await raw.open()
                tasks.start_soon(raw.rpc, 2, "tools/call", {"name": "place_order", "arguments": BIG_ORDER})
                approval = await feed.opened.receive()
                assert (await http.delete("/mcp", headers=raw.headers)).status_code == 200
            await assert_withdrawn(running, approval)


async def test_a_dropped_connection_is_not_a_withdrawal(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client:
                async with running.raw() as http:
                    raw = RawSession(http)
                    await raw.open()
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(
                            raw.rpc, 2, "tools/call", {"name": "place_order", "arguments": BIG_ORDER}
                        )
                        approval = await feed.opened.receive()
                        tasks.cancel_scope.cancel()  # the connection closes; no notifications/cancelled
                await until_no_agent_waits(running)
                still = await running.broker.approvals.store.get(approval.id)
                assert still is not None and still.status is ApprovalStatus.PENDING
                # The agent comes back with the identical call and gets the decision.
                async with anyio.create_task_group() as tasks:
                    outcome: dict[str, Any] = {}
                    waiting = anyio.Event()

                    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                        waiting.set()

                    async def again() -> None:
                        outcome["result"] = await client.call_tool(
                            "place_order", BIG_ORDER, progress_callback=on_progress
                        )

                    tasks.start_soon(again)
                    await waiting.wait()
                    async with running.approver("alice") as alice:
                        assert (await alice.post(f"/api/approvals/{approval.id}/approve")).status_code == 200
                assert outcome["result"].structured_content["quantity"] == 10


async def test_a_cancelled_task_answers_with_its_outcome(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, POLICY, exchange_server())
    settings = replace(settings, approvals=replace(settings.approvals, hold_budget=0.2))
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.raw() as http:
                raw = RawSession(http)
                await raw.open()
                rpc = raw.rpc

                # The same call parked first without a task: a task-augmented repeat still gets a task.
                plain = await rpc(2, "tools/call", {"name": "place_order", "arguments": BIG_ORDER})
                assert text_of_raw(plain).startswith("PENDING HUMAN APPROVAL")
                created = await rpc(
                    3, "tools/call", {"name": "place_order", "arguments": BIG_ORDER, "task": {"ttl": 60000}}
                )
                task_id = created["result"]["task"]["taskId"]
                approval_id = plain["result"]["_meta"]["io.github.mcp-approval-broker/approval"]["approvalId"]
                approval = await running.broker.approvals.store.get_by_task(task_id)
                assert approval is not None and approval.id == approval_id

                assert (await rpc(4, "tasks/cancel", {"taskId": task_id}))["result"]["status"] == "cancelled"
                result = await rpc(5, "tasks/result", {"taskId": task_id})
                assert result["result"]["isError"] is True
                assert text_of_raw(result).startswith("Cancelled:")
                checked = await rpc(
                    6, "tools/call", {"name": "check_approval", "arguments": {"approval_id": approval_id}}
                )
                assert text_of_raw(checked).startswith("Cancelled:")


def text_of_raw(message: dict[str, Any]) -> str:
    return " ".join(block.get("text", "") for block in message["result"]["content"])


async def test_withdrawing_one_request_leaves_the_approval_to_an_identical_request_still_waiting(
    tmp_path: Path,
) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        answers: dict[int, dict[str, Any]] = {}
        with anyio.fail_after(30):
            async with running.raw() as http, anyio.create_task_group() as tasks:
                raw = RawSession(http)
                await raw.open()

                async def call(request_id: int) -> None:
                    params = {"name": "place_order", "arguments": BIG_ORDER}
                    answers[request_id] = await raw.rpc(request_id, "tools/call", params)

                tasks.start_soon(call, 1)
                approval = await feed.opened.receive()
                tasks.start_soon(call, 2)  # a retry from the same session: attached
                while running.broker.approvals.held_calls < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                stop = cancelled(1, "user pressed stop")
                assert (await http.post("/mcp", json=stop, headers=raw.headers)).status_code == 202
                await until_no_agent_waits(running, but=1)
                still = await running.broker.approvals.store.get(approval.id)
                assert still is not None and still.status is ApprovalStatus.PENDING
                async with running.approver("alice") as alice:
                    assert (await alice.post(f"/api/approvals/{approval.id}/approve")).status_code == 200
        assert answers[1]["error"]["code"] == -32800
        result = answers[2]["result"]
        assert not result["isError"] and result["structuredContent"]["quantity"] == 10
        trail = [e.event for e in await running.broker.approvals.store.audit_trail(approval.id)]
        assert "cancelled" not in trail and trail.count("released") == 1
