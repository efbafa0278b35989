"""The official Python SDK (mcp 2.x, the broker's own): no call timeout unless asked, progress opt-in.

`Client.call_tool` sends a progress token only with a `progress_callback`, and a progress
notification does not extend `read_timeout_seconds`. On its timeout the client sends
`notifications/cancelled` with the reason "timed out after N s". The SDK hands the application the
CallToolResult; the text asserted is its text content, what a framework passes to the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from tests.clients.conftest import (
    APPROVED_ORDER,
    DENIED_ORDER,
    Desk,
    after_client_timeout,
    assert_approved,
    assert_denied,
    assert_expired,
    assert_pending,
    settings_for,
    settle,
)
from tests.e2e.harness import running_broker
from tests.e2e.test_approvals_flow import text_of

pytestmark = pytest.mark.anyio

READ_TIMEOUT = 2.0


async def test_without_progress_the_result_says_pending_and_the_next_session_gets_the_outcome(
    tmp_path: Path,
) -> None:
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)
        with anyio.fail_after(60):
            async with running.client() as client:
                first = await client.call_tool(
                    "place_order", APPROVED_ORDER, read_timeout_seconds=READ_TIMEOUT
                )
                to_approve = await desk.next_opened()
                second = await client.call_tool(
                    "place_order", DENIED_ORDER, read_timeout_seconds=READ_TIMEOUT
                )
                to_deny = await desk.next_opened()
                expired = await client.call_tool("get_balances", {}, read_timeout_seconds=READ_TIMEOUT)
            await after_client_timeout(to_approve, READ_TIMEOUT)
            await desk.approve(to_approve.id)
            await desk.deny(to_deny.id)
            await settle(desk, to_approve)
            async with running.client() as client:
                approved = await client.call_tool("place_order", APPROVED_ORDER)
                denied = await client.call_tool("place_order", DENIED_ORDER)
    assert first.is_error and second.is_error
    assert_pending(text_of(first), to_approve)
    assert_pending(text_of(second), to_deny)
    pending: Any = first.structured_content
    assert pending["status"] == "pending_approval" and pending["approval_id"] == to_approve.id
    assert_expired(text_of(expired))
    assert not approved.is_error and approved.structured_content is not None
    assert_approved(text_of(approved))
    assert denied.is_error
    assert_denied(text_of(denied))


async def test_with_a_progress_callback_the_call_is_held_until_the_human_decides(tmp_path: Path) -> None:
    progress: list[str | None] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)

        async def human() -> None:
            to_approve = await desk.next_opened()
            await anyio.sleep(2)  # past the hold budget: only the progress token keeps the call open
            await desk.approve(to_approve.id)
            await desk.deny((await desk.next_opened()).id)

        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(human)
                approved = await client.call_tool(
                    "place_order", APPROVED_ORDER, progress_callback=on_progress
                )
                denied = await client.call_tool("place_order", DENIED_ORDER, progress_callback=on_progress)
    assert_approved(text_of(approved))
    assert_denied(text_of(denied))
    assert any("Waiting for human approval" in (message or "") for message in progress)


async def test_a_timeout_cancel_does_not_withdraw_the_approval(tmp_path: Path) -> None:
    # Progress does not reset this SDK's timeout: the call times out while held and the client sends
    # notifications/cancelled "timed out after 1.0s". That is the client giving up, not the agent
    # withdrawing the call: the human may still approve, and the identical call collects the result.
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)

        async def ignore(done: float, total: float | None, message: str | None) -> None:
            pass

        with anyio.fail_after(60):
            async with running.client() as client:
                with pytest.raises(MCPError, match="timed out"):
                    await client.call_tool(
                        "place_order", APPROVED_ORDER, read_timeout_seconds=1.0, progress_callback=ignore
                    )
            held = await desk.next_opened()
            assert await desk.status(held.id) == "pending"
            await desk.approve(held.id)
            await settle(desk, held)
            async with running.client() as client:
                approved = await client.call_tool("place_order", APPROVED_ORDER)
    assert_approved(text_of(approved))
