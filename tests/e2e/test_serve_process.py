"""`broker serve` as a real process: demo defaults, SIGHUP and file-change reloads, clean shutdown."""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
KEY = "serve-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(args: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", *args, "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BROKER_STATE_DIR": str(cwd)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=2) as http:
            for _ in range(300):
                if process.poll() is not None:
                    raise AssertionError(
                        f"broker exited early: {process.stderr.read() if process.stderr else ''}"
                    )
                try:
                    if http.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                signal.sigtimedwait([signal.SIGCHLD], 0.1)
            else:
                raise AssertionError("broker did not become ready within 30 s")
        yield process, url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def call(url: str, method: str, params: dict[str, object], key: str | None = None) -> dict[str, object]:
    headers = {"Accept": "application/json, text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        init = http.post(
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
        )
        session = {"Mcp-Session-Id": init.headers["mcp-session-id"]}
        response = http.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": method, "params": params}, headers=session
        )
        return dict(response.json())


def test_the_quickstart_demo_serves_the_exchange_with_its_policy(tmp_path: Path) -> None:
    with serve(["--demo"], tmp_path) as (process, url):
        tools = call(url, "tools/list", {})["result"]["tools"]  # type: ignore[index]
        names = {tool["name"] for tool in tools}
        assert {"get_ticker", "get_balances", "place_order", "binance_us_cust_cancel_order"} <= names
        assert "withdraw" not in names
        ticker = call(url, "tools/call", {"name": "get_ticker", "arguments": {"symbol": "BTCUSD"}})
        assert ticker["result"]["structuredContent"]["price"] == 97250.0  # type: ignore[index]
    # uvicorn finishes its graceful shutdown, then re-raises the SIGTERM it caught.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (process.stderr.read() if process.stderr else "")
    assert (tmp_path / "broker-demo.db").exists()


def exchange_config(tmp_path: Path, *, policy_poll_seconds: float) -> Path:
    """A config for the demo exchange whose policy (policy.yaml) allows get_ticker alone."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: "1"\ndefault: deny\nrules:\n  - tool: get_ticker\n    action: allow\n')
    servers = {
        "mcpServers": {"exchange": {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]}}
    }
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    (tmp_path / "broker.yaml").write_text(
        f"servers: servers.json\npolicy: policy.yaml\npolicy_poll_seconds: {policy_poll_seconds}\n"
        f"agents: {{bot: {{api_key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}}}\n"
        f"database_url: sqlite:///{tmp_path / 'b.db'}\n"
    )
    return policy


def test_sighup_and_file_changes_reload_the_policy_and_bad_edits_are_refused(tmp_path: Path) -> None:
    policy = exchange_config(tmp_path, policy_poll_seconds=3600)
    with serve(["--config", str(tmp_path / "broker.yaml")], tmp_path) as (process, url):

        def revision() -> str:
            return str(httpx.get(f"{url}/api/tools").json()["policy_revision"])

        def listed() -> set[str]:
            return {tool["name"] for tool in call(url, "tools/list", {}, KEY)["result"]["tools"]}  # type: ignore[index]

        first = revision()
        assert listed() == {"get_ticker"}
        policy.write_text('version: "1"\ndefault: deny\nrules:\n  - tool: "get_*"\n    action: allow\n')
        process.send_signal(signal.SIGHUP)
        with httpx.Client() as http:
            for _ in range(100):
                if http.get(f"{url}/api/tools").json()["policy_revision"] != first:
                    break
                signal.sigtimedwait([signal.SIGCHLD], 0.05)
        second = revision()
        assert second != first
        assert listed() == {"get_ticker", "get_balances"}

        policy.write_text('version: "1"\ndefault: deny\nrules:\n  - tool: "get_*"\n    acton: allow\n')
        process.send_signal(signal.SIGHUP)
        assert (
            call(url, "tools/call", {"name": "get_balances", "arguments": {}}, KEY)["result"]["isError"]
            is False
        )  # type: ignore[index]
        assert revision() == second
    stderr = process.stderr.read() if process.stderr else ""
    assert f"policy reloaded: revision {first} -> {second}" in stderr
    assert "policy reload rejected, keeping revision " + second in stderr
    assert '"action":"allow"' in stderr and '"event":"decision"' in stderr


class StderrWatch:
    """Reads a running broker's stderr as it comes, so a test can wait (bounded) for a log line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self._fd = process.stderr.fileno()
        self.text = ""

    def wait_for(self, needle: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while needle not in self.text:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(
                        f"{needle!r} not logged within {timeout} s; stderr so far:\n{self.text}"
                    )
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise AssertionError(f"broker exited before logging {needle!r}:\n{self.text}")
                self.text += chunk.decode("utf-8", "replace")


def test_the_watched_policy_survives_unreadable_edits_and_keeps_reloading(tmp_path: Path) -> None:
    policy = exchange_config(tmp_path, policy_poll_seconds=0.05)
    with serve(["--config", str(tmp_path / "broker.yaml")], tmp_path) as (process, url):
        stderr = StderrWatch(process)
        first = str(httpx.get(f"{url}/api/tools").json()["policy_revision"])

        policy.write_bytes('version: "1"\ndefault: allow\n# café\n'.encode("latin-1"))
        stderr.wait_for("policy.yaml:3:6: not valid UTF-8")
        policy.write_text(
            'version: "1"\ndefault: allow\nrules: [{tool: x, action: allow, when: {"args.q": {gt: '
            + "9" * 5000
            + "}}}]\n"
        )
        stderr.wait_for("number too long")

        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/api/tools").json()["policy_revision"] == first
        ticker = call(url, "tools/call", {"name": "get_ticker", "arguments": {"symbol": "BTCUSD"}}, KEY)
        assert ticker["result"]["isError"] is False  # type: ignore[index]
        balances = call(url, "tools/call", {"name": "get_balances", "arguments": {}}, KEY)
        assert balances["result"]["isError"] is True  # type: ignore[index]

        policy.write_text('version: "1"\ndefault: deny\nrules:\n  - tool: "get_*"\n    action: allow\n')
        stderr.wait_for(f"policy reloaded: revision {first} -> ")
        balances = call(url, "tools/call", {"name": "get_balances", "arguments": {}}, KEY)
        assert balances["result"]["isError"] is False  # type: ignore[index]


def test_without_a_key_agents_are_turned_away(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text('{"version": "1", "default": "allow"}')
    (tmp_path / "servers.json").write_text('{"mcpServers": {}}')
    (tmp_path / "broker.yaml").write_text(
        f"servers: servers.json\npolicy: policy.json\ndatabase_url: sqlite:///{tmp_path}/b.db\n"
    )
    with serve(["--config", str(tmp_path / "broker.yaml")], tmp_path) as (_, url):
        response = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert response.status_code == 401


@pytest.mark.parametrize("flag", ["--demo"])
def test_healthz_answers_while_serving(tmp_path: Path, flag: str) -> None:
    with serve([flag], tmp_path) as (_, url):
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def test_a_port_in_use_is_reported_before_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "broker", "serve", "--demo", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "BROKER_STATE_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert f"broker: port {port} is in use; is another broker running? choose one with --port" in done.stderr
    assert "Started server process" not in done.stderr and not (tmp_path / "broker-demo.db").exists()


def test_the_demo_listens_on_localhost_only(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--demo", "--host", "0.0.0.0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--demo listens on localhost only" in done.stderr
