"""Held calls survive `kill -9`: the real `broker serve` process, killed and restarted on the same database.

Each test runs the broker as a user would (a subprocess with a configuration file, the demo
exchange as its stdio upstream) on a fresh SQLite file and on a fresh PostgreSQL database.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from anyio.abc import Process
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from broker.proxy.held_answers import APPROVAL_META_KEY
from tests.e2e.harness import AGENT_KEYS, APPROVER_TOKENS, REPO
from tests.store.conftest import database_url as database_url

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: allow
  - tool: place_order          # listed first: of two matching conditional rules the earlier wins
    id: short-fuse
    when: {"args.quantity": {"gt": 1000}}
    action: require_approval
    timeout: 2
  - tool: place_order
    when: {"args.quantity": {"gt": 5}}
    action: require_approval
    timeout: 120
    approvers: ["@trading-leads"]
  - tool: binance_us_cust_cancel_order
    action: require_approval
    timeout: 120
  - tool: list_open_orders
    action: allow
"""
BIG_ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000}
HUGE_ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 5000, "price": 90000}
STARTUP_TIMEOUT = 30
PORT_ATTEMPTS = 3


def free_port() -> int:
    """A port nothing listens on right now; the broker binds it a moment later (collisions are retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class BrokerProcess:
    """`python -m broker serve --config broker.yaml`, started, killed and restarted by the test."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self._workdir = workdir
        self._config = workdir / "broker.yaml"
        (workdir / "policy.yaml").write_text(POLICY)
        config = {
            "servers": {
                "mcpServers": {
                    "exchange": {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]}
                }
            },
            "policy": "policy.yaml",
            "agents": {"trader": {"api_key": AGENT_KEYS["trader"]}},
            "approvers": {"alice": {"token": APPROVER_TOKENS["alice"], "groups": ["trading-leads"]}},
            "approvals": {"hold_budget": 1, "progress_interval": 0.2, "sweep_interval": 0.1},
            "database_url": database_url,
        }
        self._config.write_text(json.dumps(config))  # YAML is a superset of JSON
        self._starts = 0
        self._process: Process | None = None
        self._log: Path | None = None
        self._groups: list[int] = []
        self.url = ""

    async def start(self) -> str:
        for _ in range(PORT_ATTEMPTS):
            if await self._try_start(free_port()):
                return self.url
        raise AssertionError(f"the broker found no free port in {PORT_ATTEMPTS} attempts:\n{self.log()}")

    async def _try_start(self, port: int) -> bool:
        self._starts += 1
        self._log = self._workdir / f"broker-{self._starts}.log"
        with self._log.open("wb") as log:
            process = await anyio.open_process(
                [sys.executable, "-m", "broker", "serve", "--config", str(self._config), "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
                start_new_session=True,  # its own process group, so its upstream can be reaped with it
            )
        self._process = process
        self._groups.append(process.pid)
        self.url = f"http://127.0.0.1:{port}"
        with anyio.fail_after(STARTUP_TIMEOUT, reason=f"broker not ready in {STARTUP_TIMEOUT} s"):
            async with httpx2.AsyncClient(base_url=self.url, timeout=2) as http:
                while True:
                    if process.returncode is not None:
                        await process.wait()
                        if (
                            os.strerror(errno.EADDRINUSE) in self.log()
                            or "address already in use" in self.log()
                        ):
                            return False
                        raise AssertionError(f"the broker exited with {process.returncode}:\n{self.log()}")
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            return True
                    except httpx2.TransportError:
                        pass
                    # An external process has no event to wait on: poll, bounded by the deadline above.
                    await anyio.sleep(0.05)

    async def crash(self) -> None:
        """kill -9, the way an OOM killer or a lost node ends a broker: no shutdown code runs."""
        assert self._process is not None
        self._process.kill()
        with anyio.fail_after(10):
            await self._process.wait()
        assert self._process.returncode == -signal.SIGKILL
        self._process = None

    async def stop(self) -> None:
        if self._process is not None:
            await self.crash()
        for group in self._groups:
            # The upstream exits on its own when its stdin closes; this only reaps a straggler.
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log is not None else ""


@pytest.fixture
async def broker(tmp_path: Path, database_url: str) -> AsyncIterator[BrokerProcess]:
    process = BrokerProcess(tmp_path, database_url)
    try:
        yield process
    finally:
        await process.stop()


@asynccontextmanager
async def agent(url: str) -> AsyncIterator[Client]:
    """A fresh MCP session for the trader agent, as after the agent itself reconnects."""
    headers = {"Authorization": f"Bearer {AGENT_KEYS['trader']}"}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client:
        yield client


def approver(url: str) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {APPROVER_TOKENS['alice']}"}
    return httpx2.AsyncClient(base_url=url, headers=headers, timeout=30)


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def pending_approval(result: CallToolResult) -> dict[str, Any]:
    """The approval summary of a 'pending human approval' result (asserting that is what it is)."""
    assert result.is_error, text_of(result)
    assert "PENDING HUMAN APPROVAL" in text_of(result), text_of(result)
    assert result.meta is not None
    summary: dict[str, Any] = result.meta[APPROVAL_META_KEY]
    assert summary["status"] == "pending"
    assert f"approval id {summary['approvalId']}" in text_of(result)
    return summary


async def approval_once_settled(alice: httpx2.AsyncClient, approval_id: str, *, still: str) -> dict[str, Any]:
    """The approval as the API shows it once it has left status `still` (the broker works in the background)."""
    with anyio.fail_after(10, reason=f"approval {approval_id} stayed {still}"):
        while True:
            response = await alice.get(f"/api/approvals/{approval_id}")
            assert response.status_code == 200, response.text
            shown: dict[str, Any] = response.json()
            if shown["status"] != still:
                return shown
            await anyio.sleep(0.05)


async def test_held_calls_survive_kill_9(broker: BrokerProcess) -> None:
    """Two calls are parked when the broker is killed: one waits for a human (120 s), one has a 2 s
    fuse that burns out while no broker is running. After the restart the first is approved and
    reaches the exchange once; the second is reported expired and never does."""
    with anyio.fail_after(90):
        url = await broker.start()
        held: dict[str, dict[str, Any]] = {}
        async with agent(url) as client, anyio.create_task_group() as calls:

            async def park(name: str, order: dict[str, Any]) -> None:
                held[name] = pending_approval(await client.call_tool("place_order", order))

            calls.start_soon(park, "big", BIG_ORDER)
            calls.start_soon(park, "huge", HUGE_ORDER)
        big_id, huge_id = held["big"]["approvalId"], held["huge"]["approvalId"]

        await broker.crash()
        # Stay down until the short deadline is behind us: nobody is running to expire it.
        expires_at = datetime.fromisoformat(held["huge"]["expiresAt"].replace("Z", "+00:00"))
        down_for = (expires_at - datetime.now(UTC)).total_seconds() + 0.2
        assert down_for < 3, f"the short-fuse rule did not apply: expires at {held['huge']['expiresAt']}"
        await anyio.sleep(max(down_for, 0))
        url = await broker.start()

        async with approver(url) as alice:
            expired = await approval_once_settled(alice, huge_id, still="pending")
            assert expired["status"] == "expired", expired
            assert expired["decided_by"] == "timeout" and expired["decided_via"] == "timeout"
            late = await alice.post(f"/api/approvals/{huge_id}/approve")
            assert late.status_code == 409, late.text
            assert "already expired" in late.json()["detail"]["message"]

            listed = await alice.get("/api/approvals", params={"status": "pending"})
            assert listed.status_code == 200, listed.text
            [pending] = listed.json()["approvals"]
            assert pending["id"] == big_id
            assert pending["arguments"] == BIG_ORDER and pending["can_decide"] is True

            approved = await alice.post(f"/api/approvals/{big_id}/approve", json={"reason": "checked"})
            assert approved.status_code == 200, approved.text
            assert approved.json()["status"] == "approved"
            finished = await approval_once_settled(alice, big_id, still="approved")
            if finished["status"] == "released":
                finished = await approval_once_settled(alice, big_id, still="released")
            assert finished["status"] == "completed", broker.log()

        # The agent reconnects (its old session died with the broker) and repeats its calls.
        async with agent(url) as client:
            placed = await client.call_tool("place_order", BIG_ORDER)
            assert not placed.is_error, text_of(placed)
            assert placed.structured_content is not None
            assert placed.structured_content["order_id"] == "ord-1001"
            assert (
                placed.structured_content["quantity"] == 10 and placed.structured_content["status"] == "open"
            )
            assert placed.meta is not None and placed.meta[APPROVAL_META_KEY]["approvalId"] == big_id

            told = await client.call_tool("place_order", HUGE_ORDER)
            assert told.is_error
            assert "Expired: nobody approved" in text_of(told) and "it was not executed" in text_of(told)
            assert told.meta is not None and told.meta[APPROVAL_META_KEY]["approvalId"] == huge_id

            # The outcome was delivered, so the same call again is a new request for a human.
            asked_again = pending_approval(await client.call_tool("place_order", BIG_ORDER))
            assert asked_again["approvalId"] not in (big_id, huge_id)

            orders = await client.call_tool("list_open_orders", {})
            assert not orders.is_error, text_of(orders)
            assert orders.structured_content is not None
            assert [order["order_id"] for order in orders.structured_content["result"]] == ["ord-1001"]

        async with approver(url) as alice:
            shown = (await alice.get(f"/api/approvals/{big_id}")).json()
        events = [(entry["event"], entry["actor"]) for entry in shown["audit"]]
        assert [event for event, _ in events] == [
            "requested",
            "pending_told",
            "approved",
            "released",
            "completed",
            "delivered",
        ]
        assert events[0][1] == events[1][1] == "trader" and events[2][1] == "alice"
