"""Classify tool lists fetched from real third-party MCP servers over stdio."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from broker.catalogue import CatalogueTool, Category, Risk, classify_tools, starter_policy_yaml
from broker.policy import Action, load_policy


async def list_tool_definitions(params: StdioServerParameters) -> list[dict[str, Any]]:
    with anyio.fail_after(30):
        async with Client(params, mode="legacy") as client:
            result = await client.list_tools()
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in result.tools]


@pytest.mark.anyio
async def test_mcp_server_time_is_read_only_and_allowed() -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"]
    )
    definitions = await list_tool_definitions(params)
    tools = [CatalogueTool("time", d["name"], d["name"], d) for d in definitions]

    results = classify_tools(tools)

    assert {item.name for item in results} >= {"get_current_time", "convert_time"}
    for item in results:
        assert (item.category, item.risk) == (Category.READ_ONLY, Risk.LOW), (item.name, item.reasons)
    policy = load_policy(starter_policy_yaml(results, multiple_servers=False), source="time.yaml")
    for item in results:
        decision = policy.decide(item.name, server="time")
        assert decision.action is Action.ALLOW
        assert decision.rate_limit is not None and decision.rate_limit.max_calls == 60
