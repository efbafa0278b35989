"""Escalation end to end with the official Python SDK client and an injected clock (no waiting):
a call nobody decided is escalated to the next approver, the agent's pending answer, its re-call
and MCP tasks say so, the web inbox marks it, the added approver's approval releases the call,
and the deadline moved as the rule says."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from broker.approvals import Approval
from tests.e2e.harness import FAST_APPROVALS, RawSession, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, text_of
from tests.store.conftest import ManualClock
from tests.web.support import accounts_with_passwords, http_signed_in

pytestmark = pytest.mark.anyio

ESCALATION_POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    timeout: 20m
    approvers: ["alice"]
    escalate: {after: 10m, to: ["bob"], channels: ["web"], extend: 15m}
"""


class Steps:
    """The escalation steps the broker announces, so the test waits on them instead of sleeping."""

    def __init__(self) -> None:
        self.reached: list[Approval] = []
        self._changed = anyio.Event()

    async def approval_opened(self, approval: Approval) -> None:
        return None

    async def approval_updated(self, approval: Approval) -> None:
        if approval.escalation_step:
            self.reached.append(approval)
            self._changed.set()
            self._changed = anyio.Event()

    async def until_escalated(self) -> Approval:
        while not self.reached:
            await self._changed.wait()
        return self.reached[0]


def settings_for(tmp_path: Path, *, hold_budget: float = 0.3):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path,
        ESCALATION_POLICY,
        exchange_server(),
        approvers=accounts_with_passwords(),
        approvals=replace(FAST_APPROVALS, hold_budget=hold_budget),
    )


async def test_an_undecided_call_is_escalated_and_the_added_approver_releases_it(tmp_path: Path) -> None:
    clock = ManualClock(datetime.now(UTC))
    async with running_broker(settings_for(tmp_path), clock=clock) as running:
        steps = Steps()
        running.broker.approvals.add_listener(steps)
        with anyio.fail_after(60):
            async with running.client() as client:
                pending = await client.call_tool("place_order", BIG_ORDER)
                assert pending.is_error and text_of(pending).startswith("PENDING HUMAN APPROVAL")
                approval_id = pending.structured_content["approval_id"]
                held = await running.broker.store.get(approval_id)
                assert held is not None
                async with running.approver("bob") as bob:
                    refused = await bob.post(f"/api/approvals/{approval_id}/approve")
                    assert refused.status_code == 403 and "not an approver" in refused.text

                clock.advance(timedelta(minutes=10))
                await running.broker.approvals.sweep()
                escalated = await steps.until_escalated()
                assert escalated.expires_at == held.expires_at + timedelta(minutes=15)

                again = await client.call_tool("place_order", BIG_ORDER)
                assert "Nobody decided in time, so it was escalated to bob." in text_of(again)
                async with http_signed_in(running, "bob") as web:
                    page = (await web.get(f"/approvals/{approval_id}")).text
                    assert 'data-escalated="1"' in page and "escalated to bob" in page
                    inbox = (await web.get("/")).text
                    assert 'data-escalated="1"' in inbox

                async with running.approver("bob") as bob:
                    decided = await bob.post(f"/api/approvals/{approval_id}/approve")
                    assert decided.status_code == 200, decided.text
                done = await client.call_tool("place_order", BIG_ORDER)
                while text_of(done).startswith("APPROVED, RUNNING"):
                    done = await client.call_tool("place_order", BIG_ORDER)
                assert not done.is_error and done.structured_content["quantity"] == 10
                async with running.approver("bob") as bob:
                    shown = (await bob.get(f"/api/approvals/{approval_id}")).json()
                events = [entry["event"] for entry in shown["audit"]]
                assert events[:3] == ["requested", "pending_told", "escalated"] and "approved" in events
                metrics = (await running.broker.metrics.render()).decode()
                assert 'broker_approval_escalations_total{step="1"} 1.0' in metrics


async def test_mcp_tasks_say_the_call_was_escalated(tmp_path: Path) -> None:
    clock = ManualClock(datetime.now(UTC))
    async with running_broker(settings_for(tmp_path), clock=clock) as running:
        steps = Steps()
        running.broker.approvals.add_listener(steps)
        with anyio.fail_after(30):
            async with running.raw() as http:
                raw = RawSession(http)
                await raw.open()
                created = await raw.rpc(
                    2, "tools/call", {"name": "place_order", "arguments": BIG_ORDER, "task": {"ttl": 60000}}
                )
                task_id = created["result"]["task"]["taskId"]
                clock.advance(timedelta(minutes=10))
                await running.broker.approvals.sweep()
                await steps.until_escalated()
                status = await raw.rpc(3, "tasks/get", {"taskId": task_id})
                assert status["result"]["status"] == "working"
                assert status["result"]["statusMessage"].startswith(
                    "waiting for human approval (escalated to bob) until "
                )
