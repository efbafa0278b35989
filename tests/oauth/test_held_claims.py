"""A call held by a rule on the token's claims: the approval keeps the claims it was decided with,
so approving it and re-checking it at release read the same `claims.` paths as the first decision."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.types import CallToolResult

from broker.approvals import Approval
from broker.config.oauth import OAuthSettings
from tests.authserver.server import AuthServer
from tests.e2e.harness import RunningBroker, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import text_of, watch
from tests.oauth.test_oauth_flow import free_port
from tests.upstream.support import DemoHttpServer, started

pytestmark = pytest.mark.anyio

# Only a trader's order is worth asking a human about; anyone else's is refused outright.
POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    when:
      "claims.groups": {contains: traders}
    timeout: 60
    approvers: ["@trading-leads"]
"""
ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 3, "price": 1000}


@pytest.fixture
async def upstream() -> AsyncIterator[DemoHttpServer]:
    async with started({"plain": DemoHttpServer("http")}) as servers:
        yield servers["plain"]


@asynccontextmanager
async def claims_broker(
    tmp_path: Path, auth: AuthServer, policy: str = POLICY, servers: dict[str, Any] | None = None
) -> AsyncIterator[RunningBroker]:
    port = free_port()
    oauth = OAuthSettings(issuer=auth.issuer, resource=f"http://127.0.0.1:{port}/mcp")
    base = make_settings(tmp_path, policy, servers or exchange_server())
    async with running_broker(replace(base, oauth=oauth), port=port) as running:
        yield running


async def approved_by_alice(
    running: RunningBroker, token: str, tool: str, arguments: dict[str, Any]
) -> tuple[CallToolResult, Approval, dict[str, Any]]:
    """Calls `tool` with `token`, and has alice approve the call once it is held: the agent's
    result, the approval as opened, and as alice saw it before she approved."""
    feed = watch(running)
    outcome: dict[str, CallToolResult] = {}
    with anyio.fail_after(60):
        async with running.client(key=token) as client, anyio.create_task_group() as tasks:

            async def agent() -> None:
                outcome["result"] = await client.call_tool(tool, arguments)

            tasks.start_soon(agent)
            approval = await feed.opened.receive()
            async with running.approver("alice") as alice:
                shown = (await alice.get(f"/api/approvals/{approval.id}")).json()
                decided = await alice.post(f"/api/approvals/{approval.id}/approve")
                assert decided.status_code == 200, decided.text
    return outcome["result"], approval, shown


async def test_a_call_held_on_its_claims_is_approved_released_and_answered(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with claims_broker(tmp_path, auth_server) as running:
        token = auth_server.token("carol", aud=f"{running.url}/mcp", groups=["traders"])
        result, approval, shown = await approved_by_alice(running, token, "place_order", ORDER)
        assert (approval.agent, approval.arguments) == ("carol", ORDER)
        assert shown["can_decide"] is True, shown
        # The approval JSON is what it was: the agent's claims are not shown to approvers.
        assert "claims" not in shown
        assert not result.is_error, text_of(result)
        assert result.structured_content is not None
        assert (result.structured_content["quantity"], result.structured_content["status"]) == (3, "open")
        with anyio.fail_after(30):
            async with running.approver("bob") as bob:
                final = (await bob.get(f"/api/approvals/{approval.id}")).json()
        assert final["status"] == "completed"
        stored = await running.broker.approvals.store.get(approval.id)
        assert stored is not None and stored.claims is not None
        assert stored.claims["groups"] == ["traders"] and stored.claims["sub"] == "carol"
        assert token not in str(stored)


async def test_a_caller_without_the_claim_is_refused_and_nothing_is_held(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with claims_broker(tmp_path, auth_server) as running:
        token = auth_server.token("dave", aud=f"{running.url}/mcp", groups=["auditors"])
        with anyio.fail_after(60):
            async with running.client(key=token) as client:
                result = await client.call_tool("place_order", ORDER)
        assert result.is_error
        assert await running.broker.approvals.store.list(limit=10) == []


async def test_a_released_call_sends_the_claim_headers_it_would_have_sent_at_once(
    tmp_path: Path, auth_server: AuthServer, upstream: DemoHttpServer
) -> None:
    servers = {"plain": {"url": upstream.url, "agent_headers": {"X-Agent-Email": "{claims.email}"}}}
    policy = 'version: "1"\ndefault: require_approval\n'
    async with claims_broker(tmp_path, auth_server, policy, servers) as running:
        token = auth_server.token("carol", aud=f"{running.url}/mcp", email="carol@example.com")
        result, _, _ = await approved_by_alice(running, token, "seen_headers", {})
    assert not result.is_error, text_of(result)
    seen = json.loads(text_of(result))
    assert seen["x-agent-email"] == "carol@example.com"
    assert "authorization" not in seen and not any(token in value for value in seen.values())
