"""Several real `broker serve` processes on one PostgreSQL database, sharing one upstream.

The upstream is the demo exchange over streamable HTTP, one process for every replica: its
order ids (ord-1001, ord-1002, ...) count the calls that reached it, whichever replica sent
them. Agents speak the 2026-07-28 protocol (every request is self-contained, so a load
balancer may send each one to any replica) or, for MCP tasks, the 2025-11-25 handshake era.

External processes have no events to wait on, so readiness and "the agent is now held" are
polled (every 20-50 ms), always bounded by a deadline.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.abc import Process

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 45.0
PORT_ATTEMPTS = 3
APPROVER_TOKENS = {"alice": "tok-replica-alice", "bob": "tok-replica-bob"}
MODERN = "2026-07-28"
ACCEPT = "application/json, text/event-stream"


def free_port() -> int:
    """A port nothing listens on right now; the process binds it a moment later (collisions are retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class ServerProcess:
    name: str
    url: str
    process: Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        """kill -9: no shutdown code runs, as when a node or the OOM killer takes a replica."""
        self.process.kill()
        with anyio.fail_after(10):
            await self.process.wait()

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM, as an orchestrator stops a replica; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(within, reason=f"{self.name} did not stop within {within} s:\n{self.log()}"):
            return await self.process.wait()


async def _spawn(
    name: str, command: list[str], log_path: Path, ready: Callable[[httpx2.AsyncClient, str], Any]
) -> ServerProcess:
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        with log_path.open("wb") as log:
            process = await anyio.open_process(
                [*command, str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
                start_new_session=True,
            )
        server = ServerProcess(name, f"http://127.0.0.1:{port}", process, log_path)
        with anyio.fail_after(
            STARTUP_TIMEOUT, reason=f"{name} not ready in {STARTUP_TIMEOUT} s:\n{server.log()}"
        ):
            async with httpx2.AsyncClient(timeout=2) as http:
                while True:
                    if process.returncode is not None:
                        break
                    try:
                        if await ready(http, server.url):
                            return server
                    except httpx2.TransportError:
                        pass
                    await anyio.sleep(0.05)
        await process.wait()
        if os.strerror(errno.EADDRINUSE) not in server.log() and "address already in use" not in server.log():
            raise AssertionError(f"{name} exited with {process.returncode}:\n{server.log()}")
    raise AssertionError(f"{name} found no free port in {PORT_ATTEMPTS} attempts")


async def _broker_ready(http: httpx2.AsyncClient, url: str) -> bool:
    return (await http.get(f"{url}/readyz")).status_code == 200


async def _port_open(http: httpx2.AsyncClient, url: str) -> bool:
    await http.get(f"{url}/mcp")  # any answer means it listens
    return True


@dataclass
class Cluster:
    """Broker replicas (`python -m broker serve --config ...`) on one database, plus their upstream."""

    workdir: Path
    database_url: str
    policy: str
    config: Mapping[str, Any] = field(default_factory=dict)
    agent: str = field(default_factory=lambda: f"trader-{secrets.token_hex(3)}")
    """Unique per cluster, so counters kept outside the database (Redis) never carry over between runs."""
    agent_key: str = field(default_factory=lambda: secrets.token_hex(16))
    replicas: list[ServerProcess] = field(default_factory=list)
    exchange: ServerProcess | None = None
    _started: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def start_exchange(self) -> ServerProcess:
        self.exchange = await _spawn(
            "exchange",
            [sys.executable, "-m", "broker.demo.exchange", "--http"],
            self.workdir / "exchange.log",
            _port_open,
        )
        return self.exchange

    def write_config(self, name: str, **overrides: Any) -> Path:
        assert self.exchange is not None, "start the exchange first"
        (self.workdir / "policy.yaml").write_text(self.policy)
        config: dict[str, Any] = {
            "servers": {"mcpServers": {"exchange": {"url": f"{self.exchange.url}/mcp"}}},
            "policy": "policy.yaml",
            "agents": {self.agent: {"api_key": self.agent_key}},
            "approvers": {name: {"token": token} for name, token in APPROVER_TOKENS.items()},
            "database_url": self.database_url,
            **self.config,
            **overrides,
        }
        path = self.workdir / f"{name}.yaml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        return path

    async def start_replica(self, **overrides: Any) -> ServerProcess:
        name = f"replica-{next(self._started)}"
        config = self.write_config(name, **overrides)
        replica = await _spawn(
            name,
            [sys.executable, "-m", "broker", "serve", "--config", str(config), "--port"],
            self.workdir / f"{name}.log",
            _broker_ready,
        )
        self.replicas.append(replica)
        return replica

    async def start_replicas(self, count: int, **overrides: Any) -> list[ServerProcess]:
        started: list[ServerProcess] = []

        async def one() -> None:
            started.append(await self.start_replica(**overrides))

        async with anyio.create_task_group() as tasks:
            for _ in range(count):
                tasks.start_soon(one)
        return sorted(started, key=lambda replica: int(replica.name.rsplit("-", 1)[1]))

    async def close(self) -> None:
        for server in [*self.replicas, *([self.exchange] if self.exchange else [])]:
            if server.running:
                await server.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {server.name}\n{server.log()[-4000:]}" for server in self.replicas)

    def agent_client(self) -> Agent:
        return Agent(self.agent_key)

    @staticmethod
    def approver(name: str) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers={"Authorization": f"Bearer {APPROVER_TOKENS[name]}"}, timeout=30)


@asynccontextmanager
async def running_cluster(
    workdir: Path, database_url: str, *, policy: str, replicas: int, config: Mapping[str, Any] | None = None
) -> AsyncIterator[Cluster]:
    cluster = Cluster(workdir, database_url, policy, dict(config or {}))
    try:
        await cluster.start_exchange()
        await cluster.start_replicas(replicas)
        yield cluster
    finally:
        await cluster.close()


class Agent:
    """A 2026-07-28 agent: every tools/call is one self-contained POST that any replica can serve."""

    def __init__(self, key: str) -> None:
        self._http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {key}", "Accept": ACCEPT}, timeout=httpx2.Timeout(60)
        )
        self._ids = itertools.count(1)
        self.key = key

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def call(self, replica: ServerProcess, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The CallToolResult the replica answers with (a JSON-RPC error fails the test)."""
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        message = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta},
        }
        headers = {"Mcp-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool}
        response = await self._http.post(f"{replica.url}/mcp", json=message, headers=headers)
        assert response.status_code == 200, response.text
        reply = rpc_reply(response)
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result


class Session:
    """A 2025-11-25 session on one replica (the era with MCP tasks)."""

    def __init__(self, http: httpx2.AsyncClient, url: str, session_id: str, key: str) -> None:
        self._http = http
        self._url = url
        self._headers = {
            "Authorization": f"Bearer {key}",
            "Accept": ACCEPT,
            "Mcp-Session-Id": session_id,
            "Mcp-Protocol-Version": "2025-11-25",
        }
        self._ids = itertools.count(2)

    @classmethod
    async def open(cls, http: httpx2.AsyncClient, replica: ServerProcess, key: str) -> Session:
        headers = {"Authorization": f"Bearer {key}", "Accept": ACCEPT}
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "replica-test", "version": "1"},
            },
        }
        response = await http.post(f"{replica.url}/mcp", json=init, headers=headers)
        assert response.status_code == 200, response.text
        session = cls(http, f"{replica.url}/mcp", response.headers["mcp-session-id"], key)
        await http.post(
            session._url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=session._headers,
        )
        return session

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        response = await self._http.post(self._url, json=message, headers=self._headers)
        assert response.status_code == 200, response.text
        return rpc_reply(response)


def rpc_reply(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a JSON body or at the end of an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        messages = [json.loads(item) for item in data if item]
        replies = [message for message in messages if "id" in message and "method" not in message]
        assert replies, response.text
        reply: dict[str, Any] = replies[-1]
        return reply
    parsed: dict[str, Any] = response.json()
    return parsed


def text_of(result: Mapping[str, Any]) -> str:
    return " ".join(block.get("text", "") for block in result.get("content", []))


async def pending_approvals(http: httpx2.AsyncClient, replica: ServerProcess) -> list[dict[str, Any]]:
    response = await http.get(f"{replica.url}/api/approvals", params={"status": "pending"})
    assert response.status_code == 200, response.text
    approvals: list[dict[str, Any]] = response.json()["approvals"]
    return approvals


async def approval(http: httpx2.AsyncClient, replica: ServerProcess, approval_id: str) -> dict[str, Any]:
    response = await http.get(f"{replica.url}/api/approvals/{approval_id}")
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


async def held_calls(http: httpx2.AsyncClient, replica: ServerProcess) -> int:
    """How many agent requests wait on `replica` right now (its broker_held_calls gauge)."""
    response = await http.get(f"{replica.url}/metrics")
    for line in response.text.splitlines():
        if line.startswith("broker_held_calls "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no broker_held_calls in /metrics of {replica.name}")


async def until_held(
    http: httpx2.AsyncClient, replica: ServerProcess, count: int = 1, within: float = 20
) -> None:
    """Returns once `count` agent requests wait on `replica` for a human."""
    with anyio.fail_after(
        within, reason=f"{count} held calls never showed on {replica.name}:\n{replica.log()}"
    ):
        while await held_calls(http, replica) < count:  # noqa: ASYNC110 (another process: no event to wait on)
            await anyio.sleep(0.02)


def monotonic_ms() -> float:
    return time.perf_counter() * 1000
