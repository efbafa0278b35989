"""Node.js peers: the TypeScript SDK's client in front of the broker, `server-everything` behind it.

The Node side lives in tests/node (install with `npm ci --prefix tests/node`); tests/node/client.mjs
runs a JSON scenario and prints one JSON line per step.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream

from tests.e2e.harness import AGENT_KEYS, REPO, exchange_server, make_settings, running_broker

NODE_DIR = REPO / "tests/node"
NODE = shutil.which("node")
EVERYTHING_PACKAGE = NODE_DIR / "node_modules/@modelcontextprotocol/server-everything"

Step = dict[str, Any]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not on PATH"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules").is_dir(),
        reason="tests/node/node_modules is missing; install it with `npm ci --prefix tests/node`",
    ),
]

EXCHANGE_POLICY = """
version: "1"
default: deny
hide: [binance_us_cust_cancel_order]
rules:
  - tool: "get_*"
    action: allow
  - tool: withdraw
    action: deny
    reason: withdrawals are never automated
  - tool: list_open_orders
    action: allow
    agents: [auditor]
"""

# get-env would hand the agent the upstream's environment; the sampling and elicitation tools need
# client features the broker does not relay.
EVERYTHING_POLICY = """
version: "1"
default: deny
hide: ["get-env", "trigger-*-request*", "trigger-url-elicitation"]
rules:
  - tool: echo
    action: allow
  - tool: get-sum
    action: allow
  - tool: trigger-long-running-operation
    action: allow
"""


def node() -> str:
    assert NODE is not None
    return NODE


def everything_bin() -> Path:
    manifest = json.loads((EVERYTHING_PACKAGE / "package.json").read_text())
    script: str = manifest["bin"]["mcp-server-everything"]
    return EVERYTHING_PACKAGE / script


def everything_over_stdio(name: str = "everything") -> dict[str, Any]:
    return {name: {"command": node(), "args": [str(everything_bin()), "stdio"]}}


async def run_node_client(
    url: str, steps: Sequence[Step], *, api_key: str | None = None, oauth: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Runs one scenario in tests/node/client.mjs and returns its JSON lines: one per step, plus
    (with `oauth`, see tests/node/oauth.mjs) one per credential the SDK handed its provider."""
    scenario: dict[str, Any] = {"url": url, "steps": list(steps)}
    if api_key is not None:
        scenario["apiKey"] = api_key
    if oauth is not None:
        scenario["oauth"] = oauth
    finished = await anyio.run_process(
        [node(), str(NODE_DIR / "client.mjs")], input=json.dumps(scenario).encode(), check=False
    )
    stderr = finished.stderr.decode(errors="replace")
    if finished.returncode != 0:
        pytest.fail(f"client.mjs exited with {finished.returncode}: {stderr}")
    return [json.loads(line) for line in finished.stdout.decode().splitlines()]


def text_of(result: Any) -> str:
    blocks = result["content"] if isinstance(result, dict) else getattr(result, "content", [])
    return " ".join(
        block.get("text", "") if isinstance(block, dict) else getattr(block, "text", "") for block in blocks
    )


async def test_the_typescript_client_sees_only_what_the_policy_allows(tmp_path: Path) -> None:
    steps: list[Step] = [
        {"op": "list_tools"},
        {"op": "call_tool", "name": "get_ticker", "arguments": {"symbol": "BTCUSD"}},
        {"op": "call_tool", "name": "withdraw", "arguments": {"asset": "BTC", "amount": 1, "address": "x"}},
        {"op": "call_tool", "name": "binance_us_cust_cancel_order", "arguments": {"order_id": "ord-1"}},
        {"op": "call_tool", "name": "no_such_tool", "arguments": {}},
    ]
    async with running_broker(make_settings(tmp_path, EXCHANGE_POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            listing, allowed, denied, hidden, unknown = await run_node_client(
                f"{running.url}/mcp", steps, api_key=AGENT_KEYS["trader"]
            )

    assert {tool["name"] for tool in listing["result"]["tools"]} == {"get_ticker", "get_balances"}

    assert allowed["ok"] and not allowed["result"].get("isError", False)
    assert allowed["result"]["structuredContent"] == {"symbol": "BTCUSD", "price": 97250.0}

    assert denied["ok"] and denied["result"]["isError"] is True
    assert text_of(denied["result"]).startswith("Policy violation")
    assert "withdrawals are never automated" in text_of(denied["result"])

    assert hidden["ok"] and hidden["result"]["isError"] is True
    assert text_of(hidden["result"]).startswith("Policy violation")

    assert not unknown["ok"]
    assert unknown["error"]["code"] == -32602
    assert "Unknown tool" in unknown["error"]["message"]


async def test_the_bearer_key_decides_which_agent_the_typescript_client_is(tmp_path: Path) -> None:
    listing: list[Step] = [{"op": "list_tools"}]
    async with running_broker(make_settings(tmp_path, EXCHANGE_POLICY, exchange_server())) as running:
        url = f"{running.url}/mcp"
        with anyio.fail_after(30):
            [auditor] = await run_node_client(url, listing, api_key=AGENT_KEYS["auditor"])
            [refused] = await run_node_client(url, listing, api_key="not-a-key")

    assert "list_open_orders" in {tool["name"] for tool in auditor["result"]["tools"]}
    assert refused["op"] == "connect" and not refused["ok"]
    assert refused["error"]["httpStatus"] == 401
    assert refused["error"]["message"].startswith("Unauthorized")


async def test_server_everything_behind_the_broker_is_filtered_by_policy(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, EVERYTHING_POLICY, everything_over_stdio())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert names == {"echo", "get-sum", "trigger-long-running-operation"}

                echoed = await client.call_tool("echo", {"message": "through the broker"})
                assert not echoed.is_error and text_of(echoed) == "Echo: through the broker"
                summed = await client.call_tool("get-sum", {"a": 2, "b": 40})
                assert not summed.is_error and "42" in text_of(summed)

                env = await client.call_tool("get-env", {})
                assert env.is_error and text_of(env).startswith("Policy violation")
                unlisted = await client.call_tool("get-resource-links", {"count": 1})
                assert unlisted.is_error and text_of(unlisted).startswith("Policy violation")


TASK_POLICY = """
version: "1"
default: deny
rules:
  - tool: echo
    action: allow
  - tool: simulate-research-query
    action: allow
  - tool: get-sum
    action: require_approval
"""


async def test_only_calls_the_broker_holds_are_offered_and_accepted_as_tasks(tmp_path: Path) -> None:
    steps: list[Step] = [
        {"op": "list_tools"},
        {"op": "call_tool_as_task", "name": "echo", "arguments": {"message": "as a task"}},
        {"op": "call_tool", "name": "echo", "arguments": {"message": "plain"}},
        {"op": "call_tool", "name": "simulate-research-query", "arguments": {"topic": "brokers"}},
        {"op": "call_tool_as_task", "name": "get-sum", "arguments": {"a": 1, "b": 2}},
    ]
    async with running_broker(make_settings(tmp_path, TASK_POLICY, everything_over_stdio())) as running:
        with anyio.fail_after(30):
            listed, echo_task, echo_plain, research, held = await run_node_client(
                f"{running.url}/mcp", steps, api_key=AGENT_KEYS["trader"]
            )

    tools = {tool["name"]: tool for tool in listed["result"]["tools"]}
    assert "taskSupport" not in tools["echo"].get("execution", {})
    # The upstream requires a task for it, but the broker relays only plain calls to upstreams.
    assert "taskSupport" not in tools["simulate-research-query"].get("execution", {})
    assert tools["get-sum"]["execution"] == {"taskSupport": "optional"}

    assert not echo_task["ok"] and echo_task["error"]["code"] == -32601
    assert "only calls held for human approval run as tasks" in echo_task["error"]["message"]
    assert echo_plain["ok"] and text_of(echo_plain["result"]) == "Echo: plain"
    # So the upstream refuses the plain call, and the agent reads why.
    assert research["ok"] and research["result"]["isError"] is True
    assert "requires task augmentation" in text_of(research["result"])
    assert held["ok"] and held["result"]["task"]["status"] == "working"


async def test_progress_from_server_everything_reaches_both_sdk_clients(tmp_path: Path) -> None:
    received: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        received.append((progress, total, message))

    operation = {"duration": 0.2, "steps": 4}
    typescript_steps: list[Step] = [
        {
            "op": "call_tool",
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 0.3, "steps": 3},
            "progress": True,
            "resetTimeoutOnProgress": True,
        }
    ]
    async with running_broker(make_settings(tmp_path, EVERYTHING_POLICY, everything_over_stdio())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                result = await client.call_tool(
                    "trigger-long-running-operation", operation, progress_callback=on_progress
                )
            [typescript] = await run_node_client(
                f"{running.url}/mcp", typescript_steps, api_key=AGENT_KEYS["trader"]
            )

    assert not result.is_error and "Steps: 4" in text_of(result)
    assert received == [(1, 4, None), (2, 4, None), (3, 4, None), (4, 4, None)]
    assert typescript["ok"] and "Steps: 3" in text_of(typescript["result"])
    assert typescript["progress"] == [{"progress": step, "total": 3} for step in (1, 2, 3)]


# -- the client's task steps, against server-everything's own task support --------------------------


async def _wait_for_listening(stderr: ByteReceiveStream) -> None:
    seen = b""
    async for chunk in stderr:
        seen += chunk
        if b"listening on port" in seen:
            return
    raise AssertionError(f"server-everything exited before listening: {seen.decode(errors='replace')}")


async def _drain(stream: ByteReceiveStream) -> None:
    async for _ in stream:
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def everything_over_http() -> AsyncIterator[str]:
    """server-everything on streamable HTTP; it only takes a fixed PORT, so a free one is picked first."""
    port = _free_port()
    command = [node(), str(everything_bin()), "streamableHttp"]
    env = {**os.environ, "PORT": str(port)}
    async with (
        await anyio.open_process(command, env=env, stdout=subprocess.DEVNULL) as process,
        anyio.create_task_group() as background,
    ):
        assert process.stderr is not None
        try:
            with anyio.fail_after(15):
                await _wait_for_listening(process.stderr)
            background.start_soon(_drain, process.stderr)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.terminate()
            with anyio.fail_after(10):
                await process.wait()


async def test_the_client_task_steps_speak_the_sdk_task_protocol() -> None:
    research = {"name": "simulate-research-query", "arguments": {"topic": "brokers"}}
    steps: list[Step] = [
        {"op": "list_tools"},
        {"op": "call_tool_as_task", **research, "task": {"ttl": 60000}},
        {"op": "get_task"},
        {"op": "cancel_task"},
        {"op": "get_task"},
        {"op": "list_tasks"},
        {"op": "call_tool", **research},
    ]
    async with everything_over_http() as url:
        with anyio.fail_after(30):
            _, created, polled, cancelled, after, listed, untasked = await run_node_client(
                url, steps, api_key="unused"
            )

    task = created["result"]["task"]
    assert created["ok"] and task["status"] == "working"
    assert polled["result"]["taskId"] == task["taskId"] and polled["result"]["status"] == "working"
    assert cancelled["ok"] and cancelled["result"]["status"] == "cancelled"
    assert after["result"]["status"] == "cancelled"
    assert [listed_task["taskId"] for listed_task in listed["result"]["tasks"]] == [task["taskId"]]
    # The SDK refuses, on the client side, to call a taskSupport "required" tool without a task.
    assert not untasked["ok"] and untasked["error"]["code"] == -32600
    assert "requires task-based execution" in untasked["error"]["message"]


async def test_the_client_streams_a_task_to_its_result() -> None:
    # No explicit `task`: the SDK makes one because the server advertises tasks.requests.tools.call and
    # the listing marks the tool's taskSupport "required".
    steps: list[Step] = [
        {"op": "server_info"},
        {"op": "list_tools"},
        {"op": "call_tool_stream", "name": "simulate-research-query", "arguments": {"topic": "brokers"}},
        {"op": "task_result"},
        {"op": "call_tool_as_task", "name": "echo", "arguments": {"message": "not a task tool"}},
    ]
    async with everything_over_http() as url:
        with anyio.fail_after(30):
            info, _, streamed, fetched_again, refused = await run_node_client(url, steps, api_key="unused")

    assert info["result"]["protocolVersion"] == "2025-11-25"
    assert info["result"]["capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}

    kinds = [message["type"] for message in streamed["messages"]]
    assert streamed["ok"] and kinds[0] == "taskCreated" and kinds[-1] == "result"
    assert set(kinds[1:-1]) == {"taskStatus"}
    statuses = [message["task"]["status"] for message in streamed["messages"][1:-1]]
    assert statuses[-1] == "completed" and set(statuses[:-1]) == {"working"}
    assert "# Research Report: brokers" in text_of(streamed["messages"][-1]["result"])
    assert fetched_again["ok"] and text_of(fetched_again["result"]) == text_of(
        streamed["messages"][-1]["result"]
    )
    # The TypeScript server refuses a task for a tool registered without task support.
    assert not refused["ok"] and refused["error"]["code"] == -32602
    assert "Invalid task creation result" in refused["error"]["message"]
