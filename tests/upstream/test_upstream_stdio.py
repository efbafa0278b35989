"""Details only the stdio transport has: processes, pipes, environments."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import anyio
import pytest

from broker.proxy.upstream.base import UpstreamUnavailable
from broker.proxy.upstream.spec import StdioServer
from broker.proxy.upstream.stdio import StdioConnection, child_environment
from tests.upstream.support import SERVERS, Notifications, demo_stdio

NOISY_SERVER = SERVERS / "noisy_stdout.py"

pytestmark = pytest.mark.anyio


def python_server(code: str) -> StdioServer:
    return StdioServer(name="scripted", command=sys.executable, args=("-c", code), env={}, cwd=None)


async def test_third_party_time_server() -> None:
    spec = StdioServer(
        name="time",
        command=sys.executable,
        args=("-m", "mcp_server_time", "--local-timezone", "UTC"),
        env={},
        cwd=None,
    )
    connection = StdioConnection(spec, Notifications(), environ=os.environ)
    try:
        with anyio.fail_after(15):
            initialize = await connection.start()
            listed = await connection.request("tools/list", None)
            converted = await connection.request(
                "tools/call",
                {
                    "name": "convert_time",
                    "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
                },
            )
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    assert initialize["serverInfo"]["name"] == "mcp-time"
    assert {"get_current_time", "convert_time"} <= {tool["name"] for tool in listed["tools"]}
    assert converted["isError"] is False
    assert "T21:00" in converted["structuredContent"]["target"]["datetime"]


async def test_lines_that_are_not_json_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    spec = StdioServer(name="noisy", command=sys.executable, args=(str(NOISY_SERVER),), env={}, cwd=None)
    connection = StdioConnection(spec, Notifications(), environ=os.environ)
    try:
        with anyio.fail_after(15):
            await connection.start()
            listed = await connection.request("tools/list", None)
            echoed = await connection.request(
                "tools/call", {"name": "echo", "arguments": {"text": "still fine"}}
            )
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    assert "echo" in {tool["name"] for tool in listed["tools"]}
    assert echoed["content"][0]["text"] == "still fine"
    skipped = [record.getMessage() for record in caplog.records if "not JSON" in record.getMessage()]
    assert len(skipped) == 3  # one noise line before each of the three answers
    assert "Starting demo server" in skipped[0]
    assert "truncated" in skipped[1]
    assert "binary junk" in skipped[2]


async def test_a_chatty_stderr_never_blocks_the_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="broker.proxy.upstream.stdio.stderr")
    connection = StdioConnection(demo_stdio(), Notifications(), environ=os.environ)
    try:
        with anyio.fail_after(15):
            await connection.start()
            # Far beyond a pipe's buffer: the server blocks for good unless stderr is read.
            result = await connection.request(
                "tools/call", {"name": "spam_stderr", "arguments": {"kilobytes": 1024}}
            )
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    assert result["content"][0]["text"] == "spammed"
    assert any(record.getMessage().startswith("[demo] xxxx") for record in caplog.records)


async def test_a_command_that_cannot_start() -> None:
    spec = StdioServer(name="ghost", command="/nonexistent/mcp-server", args=(), env={}, cwd=None)
    connection = StdioConnection(spec, Notifications(), environ=os.environ)
    with (
        anyio.fail_after(5),
        pytest.raises(UpstreamUnavailable, match="cannot start '/nonexistent/mcp-server'"),
    ):
        await connection.start()
    await connection.aclose()


async def test_a_server_that_exits_during_the_handshake() -> None:
    connection = StdioConnection(
        python_server("import sys; sys.exit(5)"), Notifications(), environ=os.environ
    )
    with anyio.fail_after(10), pytest.raises(UpstreamUnavailable, match="exited with code 5"):
        await connection.start()
    with anyio.fail_after(10):
        await connection.wait_closed()
        await connection.aclose()


async def test_close_escalates_to_kill_for_a_stubborn_server() -> None:
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    connection = StdioConnection(python_server(stubborn), Notifications(), environ=os.environ, exit_grace=0.2)
    with pytest.raises(TimeoutError), anyio.fail_after(1):
        await connection.start()  # it never answers initialize
    pid = connection.pid
    assert pid is not None
    with anyio.fail_after(5):
        await connection.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_child_environment_passes_only_the_basics_and_the_configured_env() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "DATABASE_URL": "postgres://secret",
        "SLACK_TOKEN": "xoxb",
    }
    child = child_environment(environ, {"API_KEY": "k", "HOME": "/srv/server"})
    assert child == {"PATH": "/usr/bin", "HOME": "/srv/server", "API_KEY": "k"}


async def test_the_configured_environment_reaches_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.proxy.upstream.stdio.stderr")
    code = "import os, sys\nprint(os.environ.get('GREETING'), os.environ.get('SECRET'), os.getcwd(), file=sys.stderr)\n"
    spec = StdioServer(
        name="env", command=sys.executable, args=("-c", code), env={"GREETING": "hello"}, cwd=str(tmp_path)
    )
    connection = StdioConnection(spec, Notifications(), environ={**os.environ, "SECRET": "leak"})
    with anyio.fail_after(10), pytest.raises(UpstreamUnavailable, match="exited with code 0"):
        await connection.start()
    with anyio.fail_after(10):
        await connection.aclose()
    printed = [record.getMessage() for record in caplog.records if record.name.endswith(".stderr")]
    assert printed == [f"[env] hello None {tmp_path}"]
