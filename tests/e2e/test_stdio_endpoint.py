"""`broker serve --stdio` launched the way desktop clients launch servers, driven by the SDK's stdio client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

pytestmark = pytest.mark.anyio

POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["binance_us_cust_cancel_order"],
    "rules": [
        {"tool": "get_*", "action": "allow"},
        {"tool": "withdraw", "action": "deny", "reason": "never"},
    ],
}


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    servers = {
        "mcpServers": {"exchange": {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]}}
    }
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    config = tmp_path / "broker.yaml"
    config.write_text(
        f"servers: servers.json\npolicy: policy.json\ndatabase_url: sqlite:///{tmp_path}/b.db\n"
    )
    return config


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stdio_endpoint_enforces_the_policy(tmp_path: Path, mode: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "broker",
            "serve",
            "--stdio",
            "--config",
            str(write_config(tmp_path)),
            "--agent",
            "laptop",
        ],
    )
    with anyio.fail_after(60):
        async with Client(stdio_client(params), mode=mode) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == {"get_ticker", "get_balances"}
            ticker = await client.call_tool("get_ticker", {"symbol": "ETHUSD"})
            assert ticker.structured_content == {"symbol": "ETHUSD", "price": 3410.5}
            denied = await client.call_tool("withdraw", {"asset": "BTC", "amount": 1, "address": "x"})
            assert denied.is_error
            assert "Policy violation" in denied.content[0].text  # type: ignore[union-attr]
