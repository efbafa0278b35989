"""The official TypeScript SDK (tests/node/client.mjs): 60 s request timeout, progress opt-in.

`client.callTool` sends a progress token only with `onprogress`; progress extends the timeout only
with `resetTimeoutOnProgress: true`. On its timeout the SDK sends `notifications/cancelled` with the
reason "McpError: MCP error -32001: Request timed out". The SDK hands the application the
CallToolResult; the text asserted is its text content, what the host passes to the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.clients.conftest import (
    APPROVED_ORDER,
    DENIED_ORDER,
    Desk,
    assert_approved,
    assert_denied,
    assert_expired,
    assert_pending,
    settings_for,
    settle,
)
from tests.e2e.harness import AGENT_KEYS, running_broker
from tests.e2e.test_node_peers import Step, run_node_client, text_of

# Not skipped without node: a client of the matrix that cannot run must fail (.ci/run installs it).
pytestmark = [pytest.mark.anyio, pytest.mark.node]


def call(arguments: dict[str, Any], **options: Any) -> Step:
    return {"op": "call_tool", "name": "place_order", "arguments": arguments, **options}


async def test_with_defaults_the_result_says_pending_and_the_next_process_gets_the_outcome(
    tmp_path: Path,
) -> None:
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)
        url, key = f"{running.url}/mcp", AGENT_KEYS["trader"]
        with anyio.fail_after(90):
            first = await run_node_client(
                url,
                [call(APPROVED_ORDER), call(DENIED_ORDER), {"op": "call_tool", "name": "get_balances"}],
                api_key=key,
            )
            to_approve, to_deny, _ = [await desk.next_opened() for _ in range(3)]
            await desk.approve(to_approve.id)
            await desk.deny(to_deny.id)
            await settle(desk, to_approve)
            second = await run_node_client(url, [call(APPROVED_ORDER), call(DENIED_ORDER)], api_key=key)
    assert all(line["ok"] and line["result"]["isError"] for line in first), first
    assert_pending(text_of(first[0]["result"]), to_approve)
    assert first[0]["result"]["structuredContent"]["approval_id"] == to_approve.id
    assert_pending(text_of(first[1]["result"]), to_deny)
    assert_expired(text_of(first[2]["result"]))
    assert_approved(text_of(second[0]["result"]))
    assert_denied(text_of(second[1]["result"]))


async def test_with_reset_timeout_on_progress_the_call_is_held_until_the_human_decides(
    tmp_path: Path,
) -> None:
    waiting = {"timeoutMs": 2000, "resetTimeoutOnProgress": True, "progress": True}
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)

        async def human() -> None:
            to_approve = await desk.next_opened()
            await anyio.sleep(3)  # past both the client's 2 s timeout and the hold budget
            await desk.approve(to_approve.id)
            await desk.deny((await desk.next_opened()).id)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(human)
                approved, denied = await run_node_client(
                    f"{running.url}/mcp",
                    [call(APPROVED_ORDER, **waiting), call(DENIED_ORDER, **waiting)],
                    api_key=AGENT_KEYS["trader"],
                )
    assert_approved(text_of(approved["result"]))
    assert len(approved["progress"]) >= 2
    assert_denied(text_of(denied["result"]))


async def test_a_timeout_cancel_does_not_withdraw_the_approval(tmp_path: Path) -> None:
    # Progress without resetTimeoutOnProgress: the SDK gives up after 1 s and cancels "Request timed
    # out". The human may still approve, and the identical call collects the upstream's result.
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)
        url, key = f"{running.url}/mcp", AGENT_KEYS["trader"]
        with anyio.fail_after(60):
            [timed_out] = await run_node_client(
                url, [call(APPROVED_ORDER, timeoutMs=1000, progress=True)], api_key=key
            )
            held = await desk.next_opened()
            assert await desk.status(held.id) == "pending"
            await desk.approve(held.id)
            await settle(desk, held)
            [approved] = await run_node_client(url, [call(APPROVED_ORDER)], api_key=key)
    assert not timed_out["ok"] and timed_out["error"]["code"] == -32001
    assert_approved(text_of(approved["result"]))
