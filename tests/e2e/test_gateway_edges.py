"""Requests at the edges of what the gateway accepts, over the HTTP endpoint in front of real upstreams:
integers beyond 64 bits, absurd nesting, tools of an upstream that is down, hidden names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.e2e.harness import RunningBroker, demo_test_server, make_settings, running_broker
from tests.upstream.support import unused_port

pytestmark = pytest.mark.anyio

POLICY = f"""
version: "1"
default: allow
hide: ["*probe*"]
rules:
  - tool: add
    id: no-huge-sums
    when: {{"args.a": {{gt: {2**70}}}}}
    action: deny
    reason: too large to add unattended
"""
ACCEPT = {"Accept": "application/json, text/event-stream"}


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


async def open_session(http: httpx2.AsyncClient) -> dict[str, str]:
    init = await http.post(
        "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        },
        headers=ACCEPT,
    )
    assert init.status_code == 200, init.text
    return {**ACCEPT, "Content-Type": "application/json", "Mcp-Session-Id": init.headers["mcp-session-id"]}


async def post_raw(running: RunningBroker, body: bytes) -> tuple[int, Any]:
    async with running.raw() as http:
        headers = await open_session(http)
        response = await http.post("/mcp", content=body, headers=headers)
        # The standard library's parser, so the test sees integers exactly as they were sent.
        return response.status_code, json.loads(response.content)


async def test_integers_beyond_64_bits_go_upstream_and_come_back_exactly(tmp_path: Path) -> None:
    a, b = 2**70, 2**64 + 1
    async with running_broker(make_settings(tmp_path, POLICY, demo_test_server())) as running:
        with anyio.fail_after(30):
            body = f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"add","arguments":{{"a":{a},"b":{b}}}}}}}'
            status, answer = await post_raw(running, body.encode())
            assert status == 200, answer
            result = answer["result"]
            assert result["isError"] is False
            assert result["content"][0]["text"] == str(a + b)
            assert result["structuredContent"] == {"result": a + b}

            # 2**70 + 1 reads as 2**70 once it is a float; the rule sees the exact integer.
            body = f'{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"add","arguments":{{"a":{a + 1},"b":0}}}}}}'
            status, answer = await post_raw(running, body.encode())
            assert answer["result"]["isError"] is True
            assert "too large to add unattended" in answer["result"]["content"][0]["text"]


async def test_arguments_nested_a_thousand_levels_deep_are_invalid_params(tmp_path: Path) -> None:
    nested = '{"deeper": ' * 1000 + '"bottom"' + "}" * 1000
    body = (
        '{"jsonrpc":"2.0","id":"deep","method":"tools/call","params":{"name":"echo","arguments":{"text":'
        + nested
        + "}}}"
    )
    async with running_broker(make_settings(tmp_path, POLICY, demo_test_server())) as running:
        with anyio.fail_after(30):
            status, answer = await post_raw(running, body.encode())
            assert status == 400
            assert answer["id"] == "deep"
            assert answer["error"]["code"] == -32602
            assert "nested deeper than" in answer["error"]["message"]

            async with running.client() as client:
                assert text_of(await client.call_tool("echo", {"text": "fine"})) == "fine"


async def test_the_unknown_tool_error_names_the_upstreams_that_are_not_connected(tmp_path: Path) -> None:
    servers = {**demo_test_server("lab"), "docs": {"url": f"http://127.0.0.1:{unused_port()}/mcp"}}
    async with running_broker(make_settings(tmp_path, POLICY, servers)) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                assert text_of(await client.call_tool("lab__echo", {"text": "up"})) == "up"
                with pytest.raises(MCPError) as unknown:
                    await client.call_tool("docs__search", {"query": "x"})
                assert unknown.value.code == -32602
                message = unknown.value.message
                assert message.startswith("Unknown tool: docs__search.")
                assert "not connected right now: 'docs'" in message
                assert "'lab'" not in message


async def test_a_hidden_name_is_refused_alike_whether_or_not_such_a_tool_exists(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, demo_test_server())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                listed = {tool.name for tool in (await client.list_tools()).tools}
                assert "probe_client" not in listed and "echo" in listed
                existing = await client.call_tool("probe_client", {})
                ghost = await client.call_tool("probe_nothing", {})
                for result in (existing, ghost):
                    assert result.is_error
                    assert text_of(result).startswith("Policy violation")
                    assert "hide[0]" in text_of(result) and "exists" not in text_of(result)
                    assert running.broker.policy_file.holder.current.revision in text_of(result)
                assert text_of(existing).replace("probe_client", "?") == text_of(ghost).replace(
                    "probe_nothing", "?"
                )
                with pytest.raises(MCPError) as unknown:
                    await client.call_tool("no_such_tool", {})
                assert unknown.value.message == "Unknown tool: no_such_tool"
