"""Starts a real broker (real upstream processes, real uvicorn socket) for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from broker.app import Broker
from broker.approvals.approvers import ApproverAccount
from broker.approvals.clock import Clock, utc_now
from broker.config.settings import ApprovalSettings, BrokerSettings
from broker.net.limits import limited_protocol
from broker.proxy.auth.api_keys import AgentCredential

REPO = Path(__file__).resolve().parents[2]
AGENT_KEYS = {"trader": "key-trader-0001", "auditor": "key-auditor-0002"}
APPROVER_TOKENS = {"alice": "tok-alice-0001", "bob": "tok-bob-0002", "mallory": "tok-mallory-0003"}
APPROVER_GROUPS = {"alice": {"trading-leads"}, "bob": {"trading-leads"}, "mallory": set()}
FAST_APPROVALS = ApprovalSettings(hold_budget=30.0, progress_interval=0.2, sweep_interval=0.05)


def exchange_server(name: str = "exchange") -> dict[str, Any]:
    return {name: {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]}}


def demo_test_server(name: str = "lab") -> dict[str, Any]:
    return {
        name: {
            "command": sys.executable,
            "args": [str(REPO / "tests/upstream/servers/demo_server.py"), "stdio"],
        }
    }


def credentials() -> dict[str, AgentCredential]:
    import hashlib

    return {
        agent: AgentCredential(agent=agent, key_sha256=hashlib.sha256(key.encode()).hexdigest())
        for agent, key in AGENT_KEYS.items()
    }


def approver_accounts() -> tuple[ApproverAccount, ...]:
    import hashlib

    return tuple(
        ApproverAccount(
            name=name,
            groups=frozenset(APPROVER_GROUPS[name]),
            token_sha256=hashlib.sha256(token.encode()).hexdigest(),
        )
        for name, token in APPROVER_TOKENS.items()
    )


def make_settings(
    tmp_path: Path, policy: Mapping[str, Any] | str, servers: Mapping[str, Any], **overrides: Any
) -> BrokerSettings:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy if isinstance(policy, str) else json.dumps(policy))
    settings = BrokerSettings(
        servers_document={"mcpServers": dict(servers)},
        servers_source="<test>",
        policy_path=policy_path,
        credentials=credentials(),
        database_url=f"sqlite:///{tmp_path / 'broker.db'}",
        policy_poll_seconds=3600,
        approvers=approver_accounts(),
        approvals=FAST_APPROVALS,
    )
    return replace(settings, **overrides)


@dataclass
class RunningBroker:
    broker: Broker
    url: str

    def client(self, agent: str = "trader", *, mode: str = "legacy", key: str | None = None) -> Client:
        headers = {"Authorization": f"Bearer {key or AGENT_KEYS[agent]}"}
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
        return Client(streamable_http_client(f"{self.url}/mcp", http_client=http), mode=mode)

    def raw(self, agent: str | None = "trader") -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {AGENT_KEYS[agent]}"} if agent else {}
        return httpx2.AsyncClient(base_url=self.url, headers=headers, timeout=30)

    def approver(self, name: str) -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {APPROVER_TOKENS[name]}"}
        return httpx2.AsyncClient(base_url=self.url, headers=headers, timeout=30)


class RawSession:
    """JSON-RPC over /mcp written by hand, in one 2025-11-25 session: for what SDK clients do not send."""

    ACCEPT = {"Accept": "application/json, text/event-stream"}

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http
        self.headers: dict[str, str] = {}

    async def open(self) -> dict[str, Any]:
        """Initializes the session; returns the initialize result."""
        initialize = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        }
        opened = await self.http.post("/mcp", json=initialize, headers=self.ACCEPT)
        self.headers = {
            **self.ACCEPT,
            "Mcp-Session-Id": opened.headers["mcp-session-id"],
            "Mcp-Protocol-Version": "2025-11-25",
        }
        result: dict[str, Any] = opened.json()["result"]
        return result

    async def rpc(self, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
            headers=self.headers,
        )
        return dict(response.json())


@asynccontextmanager
async def serve_asgi(app: Any, *, port: int = 0, **config: Any) -> AsyncIterator[str]:
    """Serves `app` on a loopback port (kernel-chosen unless given); the socket listens before the
    URL is handed out.

    `config` goes to uvicorn.Config, e.g. the listener protocol `broker serve` runs (`http=`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; uvicorn does not set it on sockets it is handed, and without it
    # every keep-alive answer waits ~40 ms for Nagle plus delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, **config))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with anyio.fail_after(10):
            await task
        sock.close()


@asynccontextmanager
async def running_broker(
    settings: BrokerSettings, *, clock: Clock = utc_now, port: int = 0
) -> AsyncIterator[RunningBroker]:
    """`port`: for a broker that must know its own URL before it listens (OAuth's resource URI)."""
    broker = Broker(settings, environ=dict(os.environ), clock=clock)
    # The listener `broker serve` runs: deadlines for slow requests, a cap per client address.
    listener = limited_protocol(settings.limits, exempt=settings.web.trusted_proxies)
    async with (
        broker.running(upstream_ready_timeout=30),
        serve_asgi(broker.asgi(), port=port, http=listener, ws="none") as url,
    ):
        try:
            yield RunningBroker(broker, url)
        finally:
            # Long-lived agent streams would otherwise hold the server's graceful shutdown open.
            broker.mcp_endpoint.shutdown()
