"""The broker in front of upstreams that really serve HTTP: streamable HTTP and legacy SSE.

Each upstream is the demo server in its own process; the agent is the SDK's client on the
broker's /mcp endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.e2e.harness import make_settings, running_broker
from tests.upstream.support import DemoHttpServer, started

pytestmark = pytest.mark.anyio

POLICY = f"""
version: "1"
default: deny
hide: ["legacy__crash", "*probe*"]
rules:
  - tool: "*__echo"
    action: allow
  - tool: web__add
    action: deny
    reason: sums go through the legacy server
  - tool: legacy__add
    id: no-huge-sums
    when: {{"args.a": {{gt: {2**70}}}}}
    action: deny
    reason: too large to add unattended
  - tool: legacy__add
    action: allow
"""


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


@pytest.fixture
async def http_upstreams() -> AsyncIterator[dict[str, DemoHttpServer]]:
    async with started({"web": DemoHttpServer("http"), "legacy": DemoHttpServer("sse")}) as servers:
        yield dict(servers)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_allow_deny_and_hide_through_streamable_http_and_sse_upstreams(
    tmp_path: Path, http_upstreams: dict[str, DemoHttpServer], mode: str
) -> None:
    servers = {name: {"url": server.url} for name, server in http_upstreams.items()}
    assert servers["legacy"]["url"].endswith("/sse") and servers["web"]["url"].endswith("/mcp")
    async with running_broker(make_settings(tmp_path, POLICY, servers)) as running:
        assert {status.name: status.state for status in running.broker.upstreams.status()} == {
            "web": "connected",
            "legacy": "connected",
        }
        with anyio.fail_after(30):
            async with running.client(mode=mode) as client:
                listed = {tool.name for tool in (await client.list_tools()).tools}
                assert listed == {"web__echo", "legacy__echo", "legacy__add"}

                for server in ("web", "legacy"):
                    echoed = await client.call_tool(f"{server}__echo", {"text": f"via {server}"})
                    assert not echoed.is_error and text_of(echoed) == f"via {server}"

                denied = await client.call_tool("web__add", {"a": 1, "b": 2})
                assert denied.is_error
                assert "Policy violation" in text_of(
                    denied
                ) and "sums go through the legacy server" in text_of(denied)

                # The upstream adds what the agent sent, digit for digit.
                summed = await client.call_tool("legacy__add", {"a": 2**70, "b": 2**64 + 1})
                assert not summed.is_error and text_of(summed) == str(2**70 + 2**64 + 1)
                assert summed.structured_content == {"result": 2**70 + 2**64 + 1}
                huge = await client.call_tool("legacy__add", {"a": 2**70 + 1, "b": 0})
                assert huge.is_error and "too large to add unattended" in text_of(huge)

                for hidden_name in ("legacy__crash", "web__probe_client"):
                    hidden = await client.call_tool(hidden_name, {})
                    assert hidden.is_error
                    assert "Policy violation" in text_of(hidden) and "hidden by policy" in text_of(hidden)

                defaulted = await client.call_tool("web__crash", {})
                assert defaulted.is_error and "default" in text_of(defaulted)

                with pytest.raises(MCPError) as unknown:
                    await client.call_tool("web__no_such_tool", {})
                assert unknown.value.code == -32602
                assert unknown.value.message == "Unknown tool: web__no_such_tool"

                # The upstreams were really used, and are still up after all of it.
                assert text_of(await client.call_tool("legacy__echo", {"text": "again"})) == "again"
