"""`broker serve --stdio` launched by the client (as desktop clients launch servers), the Python SDK's
stdio client in front of it, and a `broker serve` on the same database as the approval desk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.clients.conftest import (
    APPROVED_ORDER,
    DENIED_ORDER,
    POLICY,
    Desk,
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


def stdio_config(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    servers = {
        "mcpServers": {"exchange": {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]}}
    }
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    config = tmp_path / "broker.yaml"
    config.write_text(
        f"servers: servers.json\npolicy: policy.yaml\ndatabase_url: sqlite:///{tmp_path / 'broker.db'}\n"
        "approvals: {hold_budget: 1, progress_interval: 0.2}\n"
    )
    return config


async def test_a_stdio_agent_is_told_pending_and_gets_the_outcome_of_the_identical_call(
    tmp_path: Path,
) -> None:
    command = [
        "-m",
        "broker",
        "serve",
        "--stdio",
        "--config",
        str(stdio_config(tmp_path)),
        "--agent",
        "laptop",
    ]
    params = StdioServerParameters(command=sys.executable, args=command)
    # The desk shares the stdio broker's SQLite database, as `broker serve` for the inbox would.
    async with running_broker(settings_for(tmp_path, hold_budget=1)) as running:
        desk = Desk(running)
        with anyio.fail_after(90):
            async with Client(stdio_client(params)) as client:
                first = await client.call_tool("place_order", APPROVED_ORDER)
                second = await client.call_tool("place_order", DENIED_ORDER)
                expired = await client.call_tool("get_balances", {})
                store = running.broker.approvals.store
                held = {
                    approval.arguments["quantity"]: approval
                    for approval in await store.list(limit=10)
                    if approval.tool == "place_order"
                }
                to_approve, to_deny = held[APPROVED_ORDER["quantity"]], held[DENIED_ORDER["quantity"]]
                await desk.approve(to_approve.id)
                await desk.deny(to_deny.id)
                await settle(desk, to_approve)
                approved = await client.call_tool("place_order", APPROVED_ORDER)
                denied = await client.call_tool("place_order", DENIED_ORDER)
    assert_pending(text_of(first), to_approve)
    assert_pending(text_of(second), to_deny)
    assert_expired(text_of(expired))
    assert_approved(text_of(approved))
    assert_denied(text_of(denied))
