"""An agent signed in with OAuth: its upstream sees the claims configured in `agent_headers`, never its token."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from broker.config.oauth import OAuthSettings
from tests.authserver.server import AuthServer
from tests.e2e.harness import make_settings, running_broker
from tests.upstream.support import DemoHttpServer, started
from tests.upstream.token_server import guarded_demo_server_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def upstream() -> AsyncIterator[DemoHttpServer]:
    async with started({"plain": DemoHttpServer("http")}) as servers:
        yield servers["plain"]


async def test_the_upstream_sees_the_configured_claims_and_not_the_token(
    tmp_path: Path, auth_server: AuthServer, upstream: DemoHttpServer
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    oauth = OAuthSettings(issuer=auth_server.issuer, resource=f"http://127.0.0.1:{port}/mcp")
    servers = {
        "plain": {
            "url": upstream.url,
            "agent_headers": {"X-Agent": "{agent}", "X-Agent-Email": "{claims.email}"},
        }
    }
    base = make_settings(tmp_path, 'version: "1"\ndefault: allow\n', servers)
    async with running_broker(replace(base, oauth=oauth), port=port) as running:
        token = auth_server.token("carol", aud=f"{running.url}/mcp", email="carol@example.com")
        with anyio.fail_after(60):
            async with running.client(key=token) as client:
                result = await client.call_tool("seen_headers", {})
                assert not result.is_error, result
                seen = json.loads(result.content[0].text)  # type: ignore[union-attr]
                # An API-key agent has no e-mail claim: refused, not sent without the header.
            async with running.client("trader") as keyed:
                refused = await keyed.call_tool("seen_headers", {})
    assert (seen["x-agent"], seen["x-agent-email"]) == ("carol", "carol@example.com")
    assert "authorization" not in seen
    assert not any(token in value for value in seen.values())
    assert refused.is_error
    assert "needs claim 'email'" in " ".join(getattr(block, "text", "") for block in refused.content)


async def test_token_exchange_gives_the_upstream_a_token_for_the_agent_not_the_agents_own(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    broker_id, broker_secret = auth_server.register_client()
    upstream_id, upstream_secret = auth_server.register_client()
    guarded = guarded_demo_server_for(f"{auth_server.url}/introspect", (upstream_id, upstream_secret))
    async with started({"docs": guarded}) as upstreams:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        oauth = OAuthSettings(issuer=auth_server.issuer, resource=f"http://127.0.0.1:{port}/mcp")
        exchange = {
            "type": "token_exchange",
            "issuer": auth_server.issuer,
            "client_id": broker_id,
            "client_secret": broker_secret,
            "resource": "https://docs.internal/mcp",
        }
        servers = {"docs": {"url": upstreams["docs"].url, "auth": exchange}}
        base = make_settings(tmp_path, 'version: "1"\ndefault: allow\n', servers)
        async with running_broker(replace(base, oauth=oauth), port=port) as running:
            token = auth_server.token("carol", aud=f"{running.url}/mcp")
            with anyio.fail_after(60):
                async with running.client(key=token) as client:
                    result = await client.call_tool("seen_headers", {})
                    assert not result.is_error, result
                    seen = json.loads(result.content[0].text)  # type: ignore[union-attr]
                async with running.client("trader") as keyed:
                    refused = await keyed.call_tool("seen_headers", {})
    sent = seen["authorization"].removeprefix("Bearer ")
    assert sent != token and token not in json.dumps(seen)
    issued = auth_server.tokens[sent]
    assert issued.user is not None and issued.user.sub == "carol"
    assert (issued.client_id, issued.resource) == (broker_id, "https://docs.internal/mcp")
    assert refused.is_error
    assert "did not sign in with OAuth" in " ".join(getattr(block, "text", "") for block in refused.content)
