"""The TypeScript SDK client on a quorum-2 call: it waits with progress naming who approved, and
gets the upstream's result once a second, different approver agrees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from tests.e2e.harness import AGENT_KEYS, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, watch
from tests.e2e.test_node_peers import Step, pytestmark, run_node_client
from tests.e2e.test_quorum_flow import QUORUM_POLICY, approve, feed_of

__all__ = ["pytestmark"]


async def test_a_typescript_client_waits_for_two_approvers(tmp_path: Path) -> None:
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
    async with running_broker(make_settings(tmp_path, QUORUM_POLICY, exchange_server())) as running:
        opened, votes = watch(running), feed_of(running)
        outcome: list[list[dict[str, Any]]] = []

        async def client() -> None:
            outcome.append(await run_node_client(f"{running.url}/mcp", steps, api_key=AGENT_KEYS["trader"]))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client)
                approval = await opened.opened.receive()
                async with running.approver("alice") as alice, running.approver("bob") as bob:
                    await approve(alice, approval.id)
                    await votes.until_votes(1)
                    # Real time on purpose: the client must see progress ticks (every 0.2 s) naming alice.
                    await anyio.sleep(1.5)
                    await approve(bob, approval.id)
        [call] = outcome[0]
    assert call["ok"], call
    assert call["result"]["structuredContent"]["quantity"] == 10
    messages = [update.get("message", "") for update in call["progress"]]
    assert any("1 of 2 approvals (alice)" in message for message in messages), messages
