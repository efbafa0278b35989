"""The TypeScript SDK client on an edited approval: it reads first that a human changed the
arguments, from what to what, then the upstream's result for the changed call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from tests.e2e.harness import AGENT_KEYS, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, watch
from tests.e2e.test_edits_flow import EDIT_POLICY, META, post
from tests.e2e.test_node_peers import Step, pytestmark, run_node_client

__all__ = ["pytestmark"]


async def test_a_typescript_client_reads_the_changed_arguments(tmp_path: Path) -> None:
    steps: list[Step] = [
        {"op": "call_tool", "name": "place_order", "arguments": BIG_ORDER, "timeoutMs": 30000}
    ]
    async with running_broker(make_settings(tmp_path, EDIT_POLICY, exchange_server())) as running:
        opened = watch(running)
        outcome: list[list[dict[str, Any]]] = []

        async def client() -> None:
            outcome.append(await run_node_client(f"{running.url}/mcp", steps, api_key=AGENT_KEYS["trader"]))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client)
                approval = await opened.opened.receive()
                async with running.approver("alice") as alice:
                    response = await post(alice, approval.id, {"edits": {"quantity": 6, "price": 88000}})
                    assert response.status_code == 200, response.text
        [call] = outcome[0]
    assert call["ok"], call
    result = call["result"]
    assert result["content"][0]["text"] == (
        "A human (alice) changed the arguments before approving: price 90000 -> 88000, quantity 10 -> 6. "
        "The upstream ran the call with the changed arguments; the result below is for those."
    )
    assert result["structuredContent"]["quantity"] == 6 and result["structuredContent"]["price"] == 88000
    assert result["_meta"][META]["edited"]["originalArguments"] == BIG_ORDER
