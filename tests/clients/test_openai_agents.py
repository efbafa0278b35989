"""The OpenAI Agents SDK (MCPServerStreamableHttp): 5 s request timeout by default, no progress token.

Its tools are driven through `MCPUtil.to_function_tool(...).on_invoke_tool`, what the agent runner
calls, so the text asserted is the tool output the model is given.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from broker.config.settings import ApprovalSettings
from tests.clients.conftest import (
    APPROVED_ORDER,
    DENIED_ORDER,
    Desk,
    after_client_timeout,
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

DEFAULT_TIMEOUT = 5.0  # MCPServerStreamableHttp(client_session_timeout_seconds=5)
SCRIPT = "openai_agents_client.py"


async def test_with_its_default_timeout_the_agent_is_told_pending_and_gets_the_outcome_on_the_next_run(
    tmp_path: Path, openai_agents_python: Path
) -> None:
    # The broker's default hold budget must answer before this client gives up.
    budget = ApprovalSettings().hold_budget
    assert budget < DEFAULT_TIMEOUT
    async with running_broker(settings_for(tmp_path, hold_budget=budget)) as running:
        desk = Desk(running)
        scenario = {"url": f"{running.url}/mcp", "apiKey": AGENT_KEYS["trader"], "timeout": None}
        with anyio.fail_after(90):
            first_run = await run_script(
                openai_agents_python,
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
            to_approve, to_deny, expiring = [await desk.next_opened() for _ in range(3)]
            # The run ended and its session with it (HTTP DELETE): the approvals stay for the human.
            assert await desk.status(to_approve.id) == "pending"
            assert await desk.status(to_deny.id) == "pending"
            await after_client_timeout(to_approve, DEFAULT_TIMEOUT)
            await desk.approve(to_approve.id)
            await desk.deny(to_deny.id)
            await settle(desk, to_approve)
            second_run = await run_script(
                openai_agents_python,
                SCRIPT,
                {
                    **scenario,
                    "steps": [
                        {"name": "place_order", "arguments": APPROVED_ORDER},
                        {"name": "place_order", "arguments": DENIED_ORDER},
                    ],
                },
            )
    assert_pending(first_run[0]["seen"], to_approve)
    assert_pending(first_run[1]["seen"], to_deny)
    assert_expired(first_run[2]["seen"])
    assert expiring.tool == "get_balances"
    assert_approved(second_run[0]["seen"])
    assert_denied(second_run[1]["seen"])


async def test_with_a_longer_timeout_and_hold_budget_the_outcome_comes_in_the_same_call(
    tmp_path: Path, openai_agents_python: Path
) -> None:
    async with running_broker(settings_for(tmp_path, hold_budget=20)) as running:
        desk = Desk(running)

        async def human() -> None:
            to_approve = await desk.next_opened()
            await after_client_timeout(to_approve, 1.0)
            await desk.approve(to_approve.id)
            await desk.deny((await desk.next_opened()).id)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(human)
                run = await run_script(
                    openai_agents_python,
                    SCRIPT,
                    {
                        "url": f"{running.url}/mcp",
                        "apiKey": AGENT_KEYS["trader"],
                        "timeout": 30,
                        "steps": [
                            {"name": "place_order", "arguments": APPROVED_ORDER},
                            {"name": "place_order", "arguments": DENIED_ORDER},
                        ],
                    },
                )
    assert_approved(run[0]["seen"])
    assert_denied(run[1]["seen"])
