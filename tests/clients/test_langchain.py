"""langchain-mcp-adapters 0.3.2 (mcp 1.x, its own virtualenv): a session per tool call, no call timeout.

`MultiServerMCPClient.get_tools()` with defaults opens a session for every tool call and ends it
(HTTP DELETE) afterwards; its only limit is the 300 s SSE read timeout. An `isError` result becomes a
ToolMessage with status "error" whose content is the text blocks: the text asserted is that content.
"""

from __future__ import annotations

from pathlib import Path

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
    run_script,
    settings_for,
    settle,
)
from tests.e2e.harness import AGENT_KEYS, running_broker

pytestmark = pytest.mark.anyio

SCRIPT = "langchain_client.py"


async def test_without_progress_the_tool_message_says_pending_and_the_next_call_gets_the_outcome(
    tmp_path: Path, langchain_python: Path
) -> None:
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)
        scenario = {"url": f"{running.url}/mcp", "apiKey": AGENT_KEYS["trader"]}
        with anyio.fail_after(90):
            first = await run_script(
                langchain_python,
                SCRIPT,
                {
                    **scenario,
                    "steps": [
                        {"name": "place_order", "arguments": APPROVED_ORDER},
                        {"name": "place_order", "arguments": DENIED_ORDER},
                        {"name": "get_balances", "arguments": {}},
                    ],
                },
            )
            to_approve, to_deny, _ = [await desk.next_opened() for _ in range(3)]
            # Each call's session was ended after its pending answer: the approvals stay.
            assert await desk.status(to_approve.id) == "pending"
            await desk.approve(to_approve.id)
            await desk.deny(to_deny.id)
            await settle(desk, to_approve)
            second = await run_script(
                langchain_python,
                SCRIPT,
                {
                    **scenario,
                    "steps": [
                        {"name": "place_order", "arguments": APPROVED_ORDER},
                        {"name": "place_order", "arguments": DENIED_ORDER},
                    ],
                },
            )
    assert [line["status"] for line in first] == ["error", "error", "error"]
    assert_pending(first[0]["seen"], to_approve)
    assert_pending(first[1]["seen"], to_deny)
    assert_expired(first[2]["seen"])
    assert second[0]["status"] == "success"
    assert_approved(second[0]["seen"])
    assert second[0]["artifact"]["structured_content"]["quantity"] == APPROVED_ORDER["quantity"]
    assert second[1]["status"] == "error"
    assert_denied(second[1]["seen"])


async def test_with_a_progress_callback_the_call_is_held_until_the_human_decides(
    tmp_path: Path, langchain_python: Path
) -> None:
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)

        async def human() -> None:
            to_approve = await desk.next_opened()
            # Well past the hold budget: only the progress token keeps this call open.
            await anyio.sleep(2)
            await desk.approve(to_approve.id)
            await desk.deny((await desk.next_opened()).id)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(human)
                run = await run_script(
                    langchain_python,
                    SCRIPT,
                    {
                        "url": f"{running.url}/mcp",
                        "apiKey": AGENT_KEYS["trader"],
                        "progress": True,
                        "steps": [
                            {"name": "place_order", "arguments": APPROVED_ORDER},
                            {"name": "place_order", "arguments": DENIED_ORDER},
                        ],
                    },
                )
    assert_approved(run[0]["seen"])
    assert any("Waiting for human approval" in message for message in run[0]["progress"]), run[0]
    assert_denied(run[1]["seen"])
