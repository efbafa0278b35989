"""What agents experience when upstreams misbehave, stream progress, change tools, or are third-party servers."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from tests.e2e.harness import demo_test_server, exchange_server, make_settings, running_broker

pytestmark = pytest.mark.anyio

ALLOW_ALL = '{"version": "1", "default": "allow"}'


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


async def test_an_upstream_that_dies_mid_call_gives_a_clear_error_and_comes_back(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, ALLOW_ALL, demo_test_server())) as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                died = await client.call_tool("crash", {})
                assert died.is_error
                assert "upstream server 'lab'" in text_of(died)
                assert "reconnecting" in text_of(died)
                # The broker stays up and the pool reconnects on its own.
                while True:
                    result = await client.call_tool("echo", {"text": "back"})
                    if not result.is_error:
                        break
                    assert "unavailable" in text_of(result)
                    await anyio.sleep(0.2)
                assert text_of(result) == "back"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_from_the_upstream_reaches_the_agent(tmp_path: Path, mode: str) -> None:
    received: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        received.append((progress, total, message))

    async with running_broker(make_settings(tmp_path, ALLOW_ALL, demo_test_server())) as running:
        with anyio.fail_after(30):
            async with running.client(mode=mode) as client:
                result = await client.call_tool(
                    "slow", {"seconds": 0.2, "steps": 4}, progress_callback=on_progress
                )
                assert text_of(result) == "slept 0.2"
    assert [step for step, _, _ in received] == [1, 2, 3, 4]
    assert received[-1][1:] == (4, "step 4")


async def test_cancelling_a_call_cancels_it_upstream(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, ALLOW_ALL, demo_test_server())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                with anyio.move_on_after(0.5):
                    await client.call_tool("slow", {"seconds": 30, "tag": "t1"})
                seen = await client.call_tool("was_cancelled", {"tag": "t1", "within": 10})
                assert seen.structured_content == {"result": True}


async def test_upstream_tool_list_changes_reach_the_agent(tmp_path: Path) -> None:
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            changed.set()

    async with running_broker(make_settings(tmp_path, ALLOW_ALL, demo_test_server())) as running:
        with anyio.fail_after(30):
            client = running.client()
            client.message_handler = on_message
            async with client:
                assert "extra" not in {t.name for t in (await client.list_tools()).tools}
                await client.call_tool("notify_change", {})
                await changed.wait()
                assert "extra" in {t.name for t in (await client.list_tools()).tools}


async def test_several_upstreams_are_qualified_and_rules_may_name_either_form(tmp_path: Path) -> None:
    policy = """
version: "1"
default: deny
rules:
  - tool: "exchange__get_ticker"
    action: allow
  - tool: echo
    action: allow
  - tool: "lab__add"
    action: deny
    reason: no arithmetic
"""
    servers = {**exchange_server(), **demo_test_server()}
    async with running_broker(make_settings(tmp_path, policy, servers)) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert names == {"exchange__get_ticker", "lab__echo"}
                assert text_of(await client.call_tool("lab__echo", {"text": "hi"})) == "hi"
                denied = await client.call_tool("lab__add", {"a": 1, "b": 2})
                assert denied.is_error and "no arithmetic" in text_of(denied)


async def test_a_third_party_server_from_pypi_behind_the_broker(tmp_path: Path) -> None:
    servers = {
        "time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
    }
    policy = '{"version": "1", "default": "deny", "rules": [{"tool": "get_current_time", "action": "allow"}]}'
    async with running_broker(make_settings(tmp_path, policy, servers)) as running:
        with anyio.fail_after(30):
            async with running.client(mode="auto") as client:
                assert {tool.name for tool in (await client.list_tools()).tools} == {"get_current_time"}
                now = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
                assert not now.is_error and "Europe/Paris" in text_of(now)
                converted = await client.call_tool(
                    "convert_time",
                    {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
                )
                assert converted.is_error and "Policy violation" in text_of(converted)


async def test_an_unreachable_upstream_does_not_stop_the_broker(tmp_path: Path) -> None:
    servers = {**exchange_server(), "gone": {"url": "http://127.0.0.1:9/mcp"}}
    async with running_broker(make_settings(tmp_path, ALLOW_ALL, servers)) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert "exchange__get_ticker" in names
                assert not (await client.call_tool("exchange__get_balances", {})).is_error
            states = {status.name: status.state for status in running.broker.upstreams.status()}
            assert states["exchange"] == "connected"
            assert states["gone"] in ("backoff", "connecting")
