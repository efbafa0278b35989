"""The TypeScript SDK client on a call that nobody decided in time: the broker (on an injected
clock) escalates it to the next approver, who could not decide it before and now releases it; the
client gets the upstream's result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from tests.e2e.harness import AGENT_KEYS, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, watch
from tests.e2e.test_escalation_flow import Steps, settings_for
from tests.e2e.test_node_peers import Step, pytestmark, run_node_client
from tests.store.conftest import ManualClock

__all__ = ["pytestmark"]


async def test_a_typescript_client_gets_the_result_the_escalated_approver_released(tmp_path: Path) -> None:
    steps: list[Step] = [
        {
            "op": "call_tool",
            "name": "place_order",
            "arguments": BIG_ORDER,
            "timeoutMs": 5000,
            "resetTimeoutOnProgress": True,
            "progress": True,
        }
    ]
    clock = ManualClock(datetime.now(UTC))
    # The client waits the whole time (a hold budget longer than the test), seeing progress.
    async with running_broker(settings_for(tmp_path, hold_budget=30.0), clock=clock) as running:
        opened, escalations = watch(running), Steps()
        running.broker.approvals.add_listener(escalations)
        outcome: list[list[dict[str, Any]]] = []

        async def client() -> None:
            outcome.append(await run_node_client(f"{running.url}/mcp", steps, api_key=AGENT_KEYS["trader"]))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client)
                approval = await opened.opened.receive()
                async with running.approver("bob") as bob:
                    early = await bob.post(f"/api/approvals/{approval.id}/approve")
                    assert early.status_code == 403
                    clock.advance(timedelta(minutes=10))
                    await running.broker.approvals.sweep()
                    await escalations.until_escalated()
                    decided = await bob.post(f"/api/approvals/{approval.id}/approve")
                    assert decided.status_code == 200, decided.text
        [call] = outcome[0]
    assert call["ok"], call
    assert call["result"]["structuredContent"]["quantity"] == 10
