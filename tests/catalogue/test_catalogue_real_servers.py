"""Classify tool lists fetched from real third-party MCP servers over stdio: mcp-server-time from
PyPI and server-everything from npm (installed by `npm ci --prefix tests/node`)."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from broker.catalogue import CatalogueTool, Category, Risk, classify_tools, starter_policy_yaml
from broker.policy import Action, load_policy
from tests.e2e.test_node_peers import EVERYTHING_PACKAGE, NODE, everything_bin, node


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


# What each server-everything tool really does, judged from its code and description.
EVERYTHING_EXPECTED = {
    "echo": (Category.READ_ONLY, Risk.LOW),
    "get-annotated-message": (Category.READ_ONLY, Risk.LOW),
    "get-resource-links": (Category.READ_ONLY, Risk.LOW),
    "get-resource-reference": (Category.READ_ONLY, Risk.LOW),
    "get-structured-content": (Category.READ_ONLY, Risk.LOW),
    "get-sum": (Category.READ_ONLY, Risk.LOW),
    "get-tiny-image": (Category.READ_ONLY, Risk.LOW),
    "trigger-long-running-operation": (Category.READ_ONLY, Risk.LOW),
    # Returns every environment variable of the server process: its API keys and passwords.
    "get-env": (Category.CREDENTIALS, Risk.CRITICAL),
    # Fetches any URL it is given (openWorldHint: true) and keeps the result as a resource.
    "gzip-file-as-resource": (Category.EXTERNAL_COMMUNICATION, Risk.HIGH),
    "toggle-simulated-logging": (Category.WRITE, Risk.MEDIUM),
    "toggle-subscriber-updates": (Category.WRITE, Risk.MEDIUM),
    "simulate-research-query": (Category.WRITE, Risk.MEDIUM),
}


@pytest.mark.anyio
@pytest.mark.node
@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
@pytest.mark.skipif(
    not EVERYTHING_PACKAGE.is_dir(),
    reason="server-everything is missing; install it with `npm ci --prefix tests/node`",
)
async def test_server_everything_is_classified_and_its_environment_dump_is_held() -> None:
    params = StdioServerParameters(command=node(), args=[str(everything_bin()), "stdio"])
    definitions = await list_tool_definitions(params)
    tools = [CatalogueTool("everything", d["name"], d["name"], d) for d in definitions]

    results = {item.name: item for item in classify_tools(tools)}

    assert set(results) >= set(EVERYTHING_EXPECTED)
    wrong = {
        name: (results[name].category, results[name].risk, results[name].reasons)
        for name, expected in EVERYTHING_EXPECTED.items()
        if (results[name].category, results[name].risk) != expected
    }
    assert not wrong
    # Every server-everything tool is annotated; each classification says what it made of that.
    assert all(
        any(reason.startswith("annotations (") for reason in item.reasons) for item in results.values()
    )
    policy = load_policy(
        starter_policy_yaml(list(results.values()), multiple_servers=False), source="everything.yaml"
    )
    assert policy.decide("get-env", server="everything").action is Action.REQUIRE_APPROVAL
    assert policy.decide("get-sum", server="everything").action is Action.ALLOW
