"""`broker serve --stdio` launched the way desktop clients launch servers, driven by the SDK's stdio client."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from broker.policy import load_policy
from broker.store.engine import create_store

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


AGENT_SIDE_SECRETS = ("ALICE_TOKEN", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "INBOX_SESSION_SECRET")


async def test_stdio_starts_without_the_approver_side_secrets(tmp_path: Path) -> None:
    """What a desktop client launches has the agent's environment: no approver tokens, no Slack
    secrets. The config names them anyway, because a `broker serve` on the same database uses it."""
    config = write_config(tmp_path)
    config.write_text(
        config.read_text()
        + "approvers:\n  alice: {token_env: ALICE_TOKEN, groups: [leads]}\n"
        + "slack: {bot_token_env: SLACK_BOT_TOKEN, signing_secret_env: SLACK_SIGNING_SECRET}\n"
        + "web: {session_secret_env: INBOX_SESSION_SECRET}\n"
    )
    agent_environment = {k: v for k, v in os.environ.items() if k not in AGENT_SIDE_SECRETS}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "broker", "serve", "--stdio", "--config", str(config)],
        env=agent_environment,
    )
    with anyio.fail_after(60):
        async with Client(stdio_client(params), mode="legacy") as client:
            ticker = await client.call_tool("get_ticker", {"symbol": "ETHUSD"})
            assert ticker.structured_content == {"symbol": "ETHUSD", "price": 3410.5}
    # The approver side still needs them, and says which is missing
    with anyio.fail_after(60):
        refused = await anyio.run_process(
            [sys.executable, "-m", "broker", "serve", "--config", str(config)],
            env=agent_environment,
            check=False,
        )
    assert refused.returncode == 2 and b"ALICE_TOKEN is not set" in refused.stderr


# -- raw JSON-RPC over the process's stdin/stdout ---------------------------------------------

DEMO_SERVER = Path(__file__).resolve().parents[1] / "upstream/servers/demo_server.py"
LAB_POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["probe_*"],
    "rules": [
        {"tool": "echo", "id": "echo-limited", "action": "allow", "rate_limit": {"max": 3, "window": "1h"}},
        {
            "tool": "add",
            "id": "no-huge-sums",
            "when": {"args.a": {"gt": 2**70}},
            "action": "deny",
            "reason": "too large",
        },
        {"tool": "add", "action": "allow"},
        {"tool": "crash", "id": "no-crashing", "action": "deny", "reason": "keep the lab up"},
    ],
}
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class RawStdioBroker:
    """`broker serve --stdio` as a subprocess, spoken to line by line like a client would."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._ids = itertools.count(1)

    async def send_line(self, line: bytes) -> None:
        await self._stdin.send(line + b"\n")

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_line(json.dumps(message).encode())

    async def receive(self) -> dict[str, Any]:
        line = await self._stdout.receive_until(b"\n", 64 * 1024 * 1024)
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.answer_to(request_id)

    async def answer_to(self, request_id: object) -> dict[str, Any]:
        while True:
            message = await self.receive()
            if "method" not in message:
                assert message.get("id") == request_id, message
                return message

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        answer = await self.request("tools/call", {"name": tool, "arguments": arguments})
        result = answer["result"]
        assert isinstance(result, dict), answer
        return result

    async def finish(self) -> str:
        """Closes stdin (the client quits); returns what the broker logged on stderr."""
        await self._stdin.aclose()
        assert self.process.stderr is not None
        logged = b""
        async for chunk in self.process.stderr:
            logged += chunk
        assert await self.process.wait() == 0
        return logged.decode()


@asynccontextmanager
async def raw_stdio_broker(
    tmp_path: Path, *extra: str, policy: dict[str, Any] = LAB_POLICY
) -> AsyncIterator[RawStdioBroker]:
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    servers = {"mcpServers": {"lab": {"command": sys.executable, "args": [str(DEMO_SERVER), "stdio"]}}}
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    config = tmp_path / "broker.yaml"
    config.write_text(
        f"servers: servers.json\npolicy: policy.json\ndatabase_url: sqlite:///{tmp_path}/b.db\n"
        "approvals: {progress_interval: 0.1}\n"
    )
    command = [
        sys.executable,
        "-m",
        "broker",
        "serve",
        "--stdio",
        "--config",
        str(config),
        "--agent",
        "laptop",
    ]
    async with await anyio.open_process([*command, *extra]) as process:
        broker = RawStdioBroker(process)
        try:
            with anyio.fail_after(60):
                initialized = await broker.request(
                    "initialize",
                    {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "1"},
                    },
                )
                assert "result" in initialized, initialized
                await broker.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
                yield broker
        finally:
            if process.returncode is None:
                process.kill()


def error_of(answer: dict[str, Any]) -> tuple[object, int, str]:
    error = answer["error"]
    return answer["id"], error["code"], error["message"]


def text_of(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


async def test_bad_json_rpc_gets_an_error_and_the_session_goes_on(tmp_path: Path) -> None:
    async with raw_stdio_broker(tmp_path) as broker:
        with anyio.fail_after(60):
            await broker.send_line(b'{"jsonrpc": "2.0", "id": 1, "method": ')
            assert error_of(await broker.receive())[:2] == (None, -32700)
            await broker.send_line(b"[1, 2]")
            assert error_of(await broker.receive())[:2] == (None, -32600)
            await broker.send({"jsonrpc": "2.0", "id": [1], "method": "ping"})
            assert error_of(await broker.receive())[:2] == (None, -32600)
            await broker.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": ["echo"]})
            assert error_of(await broker.receive())[:2] == (7, -32602)
            answer = await broker.request("tools/call", {"name": "echo", "arguments": "hello"})
            assert error_of(answer)[1] == -32602
            answer = await broker.request("no/such/method")
            assert error_of(answer)[1] == -32601

            # A cancellation naming a request id no JSON-RPC id can be: nothing to cancel, and no crash.
            for request_id in ([1], {"a": 1}, None, 1.5):
                await broker.send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": request_id},
                    }
                )

            nested = '{"deeper": ' * 1000 + '"bottom"' + "}" * 1000
            await broker.send_line(
                b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "echo", "arguments": '
                + nested.encode()
                + b"}}"
            )
            _, code, message = error_of(await broker.answer_to(8))
            assert code == -32602
            assert "nested deeper than" in message

            assert (await broker.request("ping"))["result"] == {}
            assert text_of(await broker.call("echo", {"text": "still here"})) == "still here"
        await broker.finish()


async def test_lines_up_to_the_http_body_limit_are_served_and_longer_ones_refused(tmp_path: Path) -> None:
    async with raw_stdio_broker(tmp_path) as broker:
        with anyio.fail_after(60):
            big = "x" * 200_000
            assert text_of(await broker.call("echo", {"text": big})) == big

            near_limit = "y" * (MAX_MESSAGE_BYTES - 200)
            assert text_of(await broker.call("echo", {"text": near_limit})) == near_limit

            too_long = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 99,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "z" * MAX_MESSAGE_BYTES}},
                }
            )
            await broker.send_line(too_long.encode())
            _, code, message = error_of(await broker.receive())
            assert code == -32600 and "too large" in message

            # Far beyond the limit, so the broker must discard it in pieces.
            await broker.send_line(b"{" + b" " * (3 * MAX_MESSAGE_BYTES) + b"}")
            assert error_of(await broker.receive())[1] == -32600

            assert text_of(await broker.call("echo", {"text": "after"})) == "after"
        await broker.finish()


async def test_rate_limit_deny_and_hide_over_stdio_are_each_logged_whatever_the_log_level(
    tmp_path: Path,
) -> None:
    async with raw_stdio_broker(tmp_path, "--log-level", "warning") as broker:
        with anyio.fail_after(60):
            listed = {tool["name"] for tool in (await broker.request("tools/list"))["result"]["tools"]}
            assert listed == {"echo", "add"}
            for number in range(3):
                assert text_of(await broker.call("echo", {"text": str(number)})) == str(number)
            limited = await broker.call("echo", {"text": "one too many"})
            assert limited["isError"] is True
            assert "Rate limit exceeded" in text_of(limited) and "Retry after" in text_of(limited)

            denied = await broker.call("crash", {})
            assert denied["isError"] is True
            assert "Policy violation" in text_of(denied) and "keep the lab up" in text_of(denied)
            hidden = await broker.call("probe_client", {})
            assert hidden["isError"] is True and "Policy violation" in text_of(hidden)
            assert "exists" not in text_of(hidden)
            pid = broker.process.pid
        logged = await broker.finish()

    decisions = [json.loads(line) for line in logged.splitlines() if line.startswith('{"event":"decision"')]
    assert [(line["tool"], line["action"], line.get("outcome")) for line in decisions] == [
        ("echo", "allow", None),
        ("echo", "allow", None),
        ("echo", "allow", None),
        ("echo", "allow", "rate_limited"),
        ("crash", "deny", None),
        ("probe_client", "hide", None),
    ]
    revision = load_policy(json.dumps(LAB_POLICY), source="policy.json").revision
    crash = decisions[4]
    assert crash == {
        "event": "decision",
        "decision_id": crash["decision_id"],
        "agent": "laptop",
        "session": f"stdio:{pid}",
        "tool": "crash",
        "server": "lab",
        "args_sha256": hashlib.sha256(b"{}").hexdigest(),
        "action": "deny",
        "rule": "no-crashing",
        "policy_revision": revision,
    }
    assert len({line["decision_id"] for line in decisions}) == len(decisions)
    assert decisions[0]["args_sha256"] == hashlib.sha256(b'{"text":"0"}').hexdigest()
    assert decisions[3]["rule"] == "echo-limited"


async def test_integers_beyond_64_bits_reach_the_upstream_and_the_policy_exactly(tmp_path: Path) -> None:
    async with raw_stdio_broker(tmp_path) as broker:
        with anyio.fail_after(60):
            a, b = 2**70, 2**64 + 1
            summed = await broker.call("add", {"a": a, "b": b})
            assert summed["isError"] is False
            assert text_of(summed) == str(a + b)
            assert summed["structuredContent"] == {"result": a + b}

            # 2**70 + 1 is 2**70 as a float: only an exact integer is above the rule's threshold.
            refused = await broker.call("add", {"a": a + 1, "b": 0})
            assert refused["isError"] is True and "too large" in text_of(refused)
        logged = await broker.finish()
    hashes = [json.loads(line)["args_sha256"] for line in logged.splitlines() if '"event":"decision"' in line]
    assert hashes[-1] == hashlib.sha256(f'{{"a":{a + 1},"b":0}}'.encode()).hexdigest()


# -- held calls the client withdraws -----------------------------------------------------------

HELD_POLICY = {"version": "1", "default": "deny", "rules": [{"tool": "echo", "action": "require_approval"}]}


async def start_held_call(broker: RawStdioBroker, request_id: int) -> str:
    """Sends a held call with a progress token; returns its approval id once the broker holds it."""
    await broker.send(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"progressToken": "p"}},
        }
    )
    while True:
        message = await broker.receive()
        if message.get("method") == "notifications/progress":
            found = re.search(r"approval (\S+)\)", message["params"]["message"])
            assert found is not None, message
            return found.group(1)


async def stored_status(tmp_path: Path, approval_id: str) -> str:
    async with create_store(f"sqlite:///{tmp_path}/b.db") as store:
        approval = await store.get(approval_id)
    assert approval is not None
    return approval.status.value


async def test_a_cancelled_held_call_and_a_closed_stdin_withdraw_their_approvals(tmp_path: Path) -> None:
    async with raw_stdio_broker(tmp_path, policy=HELD_POLICY) as broker:
        first = await start_held_call(broker, 100)
        await broker.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 100}}
        )
        checked = await broker.call("check_approval", {"approval_id": first})
        assert text_of(checked).startswith("Cancelled:"), checked

        second = await start_held_call(broker, 101)
        await broker.finish()
    assert await stored_status(tmp_path, first) == "cancelled"
    assert await stored_status(tmp_path, second) == "cancelled"
