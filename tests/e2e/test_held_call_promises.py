"""What an agent is told while a human decides, and what the broker promises after telling it.

The hold budget (`broker.proxy.waiting`) answers before impatient clients give up; after that
answer only an explicit cancellation withdraws the call; identical calls attach, except that a
second session's call while the first caller still waits is a new intent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from broker.approvals import ApprovalStatus
from broker.config.settings import ApprovalSettings, BrokerSettings
from broker.policy.decision import ApprovalRequirement
from broker.proxy.waiting import (
    DEFAULT_HOLD_BUDGET,
    ClientWaits,
    budget_for,
    holds_until_deadline,
    only_timed_out,
)
from tests.e2e.harness import RawSession, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, text_of, watch

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    timeout: 120
  - tool: binance_us_cust_cancel_order
    action: require_approval
    timeout: 120
    hold_budget: 0.2
"""
APPROVAL_META = "io.github.mcp-approval-broker/approval"


def answered_pending_quickly(tmp_path: Path, *, progress_interval: float = 5.0) -> BrokerSettings:
    """The demo exchange behind POLICY, with a 0.2 s hold budget: requests without a progress token
    are told "pending" at once."""
    approvals = ApprovalSettings(sweep_interval=0.05, progress_interval=progress_interval, hold_budget=0.2)
    return make_settings(tmp_path, POLICY, exchange_server(), approvals=approvals)


def approval_id_of(result: Any) -> str:
    return str(result.meta[APPROVAL_META]["approvalId"])


def test_the_hold_budget_is_the_smallest_of_rule_and_agent_else_the_default() -> None:
    rule = ApprovalRequirement(hold_budget_seconds=30)
    assert budget_for(4, ClientWaits(), None) == 4
    assert budget_for(4, ClientWaits(hold_budget=50), None) == 50
    assert budget_for(4, ClientWaits(), rule) == 30
    assert budget_for(4, ClientWaits(hold_budget=10), rule) == 10
    assert DEFAULT_HOLD_BUDGET < 5  # the OpenAI Agents SDK's default client timeout
    assert holds_until_deadline(ClientWaits(), has_progress_token=True)
    assert not holds_until_deadline(ClientWaits(progress_resets_timeout=False), has_progress_token=True)
    assert not holds_until_deadline(ClientWaits(), has_progress_token=False)


@pytest.mark.parametrize(
    ("reason", "timed_out"),
    [
        ("McpError: MCP error -32001: Request timed out", True),
        ("Request timeout", True),
        ("user pressed stop", False),
        (None, False),
        (42, False),
    ],
)
def test_a_cancellation_that_only_says_the_client_timed_out_withdraws_nothing(
    reason: object, timed_out: bool
) -> None:
    assert only_timed_out(reason) is timed_out


async def test_by_default_a_call_without_progress_token_is_answered_pending_before_common_timeouts(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path, POLICY, exchange_server(), approvals=ApprovalSettings(sweep_interval=0.05)
    )
    async with running_broker(settings) as running:
        # The OpenAI Agents SDK gives up after 5 s: the pending answer must come before that.
        with anyio.fail_after(DEFAULT_HOLD_BUDGET * 10), anyio.CancelScope() as scope:
            async with running.client() as client:
                pending = await client.call_tool("place_order", BIG_ORDER)
        assert not scope.cancelled_caught
        text = text_of(pending)
        assert pending.is_error and text.startswith("PENDING HUMAN APPROVAL")
        assert "NOT been executed" in text and "Do NOT retry with changed arguments" in text
        assert approval_id_of(pending) in text and "check_approval" in text and "cancel_approval" in text
        assert pending.structured_content is not None
        assert pending.structured_content["status"] == "pending_approval"
        assert pending.structured_content["approval_id"] == approval_id_of(pending)
        stored = await running.broker.approvals.store.get(approval_id_of(pending))
        assert stored is not None and stored.status is ApprovalStatus.PENDING and stored.pending_told_at


async def test_a_rule_and_an_agent_can_shorten_or_lengthen_the_hold(tmp_path: Path) -> None:
    from tests.e2e.harness import FAST_APPROVALS

    settings = make_settings(
        tmp_path,
        POLICY,
        exchange_server(),
        client_waits={"auditor": ClientWaits(hold_budget=0.2)},
        approvals=replace(FAST_APPROVALS, hold_budget=3600),
    )
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.client() as trader:
                # The rule's 0.2 s hold budget, although the broker's is an hour.
                held = await trader.call_tool("binance_us_cust_cancel_order", {"order_id": "o-1"})
                assert text_of(held).startswith("PENDING HUMAN APPROVAL")
            async with running.client("auditor") as auditor:
                # The agent's 0.2 s, for a rule that sets none.
                held = await auditor.call_tool("place_order", BIG_ORDER)
                assert text_of(held).startswith("PENDING HUMAN APPROVAL")


async def test_after_the_pending_answer_ending_the_session_withdraws_nothing(tmp_path: Path) -> None:
    settings = answered_pending_quickly(tmp_path)
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.client() as first_run:
                pending = await first_run.call_tool("place_order", BIG_ORDER)
            # The session ended (the client sent DELETE): the promise stands.
            approval_id = approval_id_of(pending)
            stored = await running.broker.approvals.store.get(approval_id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING
            async with running.approver("alice") as alice:
                assert (await alice.post(f"/api/approvals/{approval_id}/approve")).status_code == 200
            async with running.client() as next_run:
                result = await next_run.call_tool("check_approval", {"approval_id": approval_id})
                while text_of(result).startswith("APPROVED, RUNNING"):
                    result = await next_run.call_tool("check_approval", {"approval_id": approval_id})
                assert not result.is_error and result.structured_content["quantity"] == 10
                # Exactly once: the identical call now is a new request of its own.
                again = await next_run.call_tool("place_order", BIG_ORDER)
                assert approval_id_of(again) != approval_id
        assert [e.event for e in await running.broker.approvals.store.audit_trail(approval_id)].count(
            "released"
        ) == 1


async def test_cancel_approval_withdraws_a_pending_call_but_not_an_approved_one(tmp_path: Path) -> None:
    settings = answered_pending_quickly(tmp_path)
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                tools = {tool.name for tool in (await client.list_tools()).tools}
                assert {"check_approval", "cancel_approval"} <= tools
                first = approval_id_of(await client.call_tool("place_order", BIG_ORDER))
                withdrawn = await client.call_tool("cancel_approval", {"approval_id": first})
                assert not withdrawn.is_error and text_of(withdrawn).startswith("Withdrawn")
                stored = await running.broker.approvals.store.get(first)
                assert stored is not None and stored.status is ApprovalStatus.CANCELLED

                second = approval_id_of(await client.call_tool("place_order", {**BIG_ORDER, "quantity": 11}))
                async with running.approver("alice") as alice:
                    assert (await alice.post(f"/api/approvals/{second}/approve")).status_code == 200
                refused = await client.call_tool("cancel_approval", {"approval_id": second})
                assert refused.is_error and text_of(refused).startswith("Not withdrawn")
            async with running.client("auditor") as other:
                foreign = await other.call_tool("cancel_approval", {"approval_id": second})
                assert foreign.is_error and "No approval" in text_of(foreign)


async def test_identical_calls_attach_unless_another_session_still_waits(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.raw() as http_a, running.raw() as http_b, anyio.create_task_group() as tasks:
                a, b = RawSession(http_a), RawSession(http_b)
                await a.open()
                await b.open()
                answers: dict[str, dict[str, Any]] = {}

                async def call(session: RawSession, key: str, request_id: int) -> None:
                    answers[key] = await session.rpc(
                        request_id, "tools/call", {"name": "place_order", "arguments": BIG_ORDER}
                    )

                tasks.start_soon(call, a, "a1", 1)
                first = await feed.opened.receive()
                # The same session again while its own request waits: a retry, attached.
                tasks.start_soon(call, a, "a2", 2)
                # Another session while A still waits: a new intent, with an approval of its own.
                tasks.start_soon(call, b, "b1", 1)
                second = await feed.opened.receive()
                assert second.id != first.id
                async with running.approver("alice") as alice:
                    for approval in (first, second):
                        assert (await alice.post(f"/api/approvals/{approval.id}/approve")).status_code == 200
        results = {key: answer["result"] for key, answer in answers.items()}
        assert all(not result["isError"] for result in results.values()), results
        ids = {key: result["_meta"][APPROVAL_META]["approvalId"] for key, result in results.items()}
        assert ids["a1"] == ids["a2"] == first.id and ids["b1"] == second.id
        order_ids = {result["structuredContent"]["order_id"] for result in results.values()}
        assert len(order_ids) == 2  # two intents, two orders, each decided by a human


async def until(condition: Callable[[], bool]) -> None:
    """For state the broker announces no event for (a request that stopped waiting); bounded."""
    with anyio.fail_after(10):
        for _ in itertools.count():
            if condition():
                return
            await anyio.sleep(0.01)


async def test_a_caller_from_another_session_is_told_it_shares_one_execution(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.raw() as http_a, running.raw() as http_b:
                a = RawSession(http_a)
                await a.open()
                call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
                call["params"] = {"name": "place_order", "arguments": BIG_ORDER}
                # A's connection drops while it waits, before anybody told it the call is pending.
                with pytest.raises(httpx2.ReadTimeout):
                    await http_a.post(
                        "/mcp", json=call, headers=a.headers, timeout=httpx2.Timeout(5, read=0.5)
                    )
                approval = await feed.opened.receive()
                await until(lambda: running.broker.approvals.held_calls == 0)
                # B cannot know whether A's call was its own: it attaches, and is told.
                b = RawSession(http_b)
                await b.open()
                async with anyio.create_task_group() as tasks:
                    answers: dict[str, Any] = {}

                    async def call_b() -> None:
                        answers["b"] = await b.rpc(2, "tools/call", call["params"])

                    tasks.start_soon(call_b)
                    await until(lambda: running.broker.approvals.held_calls == 1)
                    async with running.approver("alice") as alice:
                        shown = (await alice.get(f"/api/approvals/{approval.id}")).json()
                        assert shown["callers"] == 2
                        assert (await alice.post(f"/api/approvals/{approval.id}/approve")).status_code == 200
        result = answers["b"]["result"]
        assert not result["isError"]
        note = result["content"][0]["text"]
        assert note.startswith(f"Note: this identical call was attached to approval {approval.id}")
        assert "all 2 identical requests" in note and result["_meta"][APPROVAL_META]["shared"] is True
        trail = [e.event for e in await running.broker.approvals.store.audit_trail(approval.id)]
        assert trail.count("attached") == 1 and "pending_told" not in trail


async def test_an_agent_told_to_come_back_is_the_same_caller_in_a_new_session(tmp_path: Path) -> None:
    settings = answered_pending_quickly(tmp_path)
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.client() as first:
                approval_id = approval_id_of(await first.call_tool("place_order", BIG_ORDER))
            async with running.approver("alice") as alice:
                assert (await alice.post(f"/api/approvals/{approval_id}/approve")).status_code == 200
            async with running.client() as next_run:
                done = await next_run.call_tool("place_order", BIG_ORDER)
                while text_of(done).startswith("APPROVED, RUNNING"):
                    done = await next_run.call_tool("place_order", BIG_ORDER)
        assert not done.is_error and not text_of(done).startswith("Note:")
        stored = await running.broker.approvals.store.get(approval_id)
        assert stored is not None and stored.callers == 1


async def test_a_request_waiting_again_after_the_pending_answer_is_not_withdrawn_by_session_end(
    tmp_path: Path,
) -> None:
    settings = answered_pending_quickly(tmp_path, progress_interval=0.1)
    async with running_broker(settings) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client:
                approval_id = approval_id_of(await client.call_tool("place_order", BIG_ORDER))
                waiting = anyio.Event()

                async def progressed(progress: float, total: float | None, message: str | None) -> None:
                    waiting.set()

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(
                        lambda: client.call_tool("place_order", BIG_ORDER, progress_callback=progressed)
                    )
                    await waiting.wait()
                    # The agent's run ends while its second request waits (the client cancels the
                    # request and ends the session): the earlier pending answer was a promise.
                    tasks.cancel_scope.cancel()
            stored = await running.broker.approvals.store.get(approval_id)
            async with running.approver("alice") as alice:
                approved = await alice.post(f"/api/approvals/{approval_id}/approve")
        assert stored is not None and stored.status is ApprovalStatus.PENDING
        assert approved.status_code == 200, approved.text
        assert not [a for a in feed.updates if a.status is ApprovalStatus.CANCELLED]
