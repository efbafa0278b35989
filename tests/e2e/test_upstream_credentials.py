"""The agent's credentials stay at the broker: upstreams see only what their configuration gives them.

The agent is the SDK's client with its API key; one upstream requires a bearer token from a
local authorization server (the broker gets it with the client-credentials grant) and is told
which agent calls; the other has no credentials configured. Both report the headers they got.
Every test runs with the upstreams on streamable HTTP and on the legacy HTTP+SSE transport.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.e2e.harness import AGENT_KEYS, make_settings, running_broker
from tests.e2e.test_approvals_flow import watch
from tests.upstream.support import DemoHttpServer, started
from tests.upstream.token_server import TokenServer, guarded_demo_server

pytestmark = pytest.mark.anyio

POLICY = 'version: "1"\ndefault: allow\n'


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    async with TokenServer(
        clients={"broker": "broker-secret", "docs-api": "docs-secret"}
    ).running() as server:
        yield server


@pytest.fixture(params=["http", "sse"])
async def upstreams(
    token_server: TokenServer, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, DemoHttpServer]]:
    guarded = guarded_demo_server(token_server, ("docs-api", "docs-secret"), mode=request.param)
    async with started({"docs": guarded, "plain": DemoHttpServer(request.param)}) as servers:
        yield dict(servers)


async def test_upstreams_never_see_the_agents_token(
    tmp_path: Path, token_server: TokenServer, upstreams: dict[str, DemoHttpServer]
) -> None:
    servers = {
        "docs": {
            "url": upstreams["docs"].url,
            "auth": {
                "type": "client_credentials",
                "issuer": token_server.issuer,
                "client_id": "broker",
                "client_secret": "broker-secret",
            },
            "agent_headers": {"X-Agent": "{agent}"},
        },
        "plain": {"url": upstreams["plain"].url},
    }
    async with running_broker(make_settings(tmp_path, POLICY, servers)) as running:
        seen = {}
        with anyio.fail_after(30):
            for agent in ("trader", "auditor"):
                async with running.client(agent) as client:
                    for server in ("docs", "plain"):
                        result = await client.call_tool(f"{server}__seen_headers", {})
                        assert not result.is_error, result
                        seen[agent, server] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    (broker_token,) = token_server.issued
    for agent, key in AGENT_KEYS.items():
        assert seen[agent, "docs"]["authorization"] == f"Bearer {broker_token}"
        assert seen[agent, "docs"]["x-agent"] == agent
        assert "authorization" not in seen[agent, "plain"]
        assert "x-agent" not in seen[agent, "plain"]
        for headers in (seen[agent, "docs"], seen[agent, "plain"]):
            assert not any(key in value for value in headers.values())


HOLDING_POLICY = """
version: "1"
default: allow
rules:
  - tool: seen_headers
    action: require_approval
    timeout: 60
"""


async def test_a_released_call_names_the_agent_that_asked_not_the_approver(
    tmp_path: Path, upstreams: dict[str, DemoHttpServer]
) -> None:
    servers = {"plain": {"url": upstreams["plain"].url, "agent_headers": {"X-Agent": "{agent}"}}}
    async with running_broker(make_settings(tmp_path, HOLDING_POLICY, servers)) as running:
        feed = watch(running)
        outcome = {}
        with anyio.fail_after(30):
            async with running.client("trader") as client, anyio.create_task_group() as tasks:

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("seen_headers", {})

                tasks.start_soon(agent)
                approval = await feed.opened.receive()
                async with running.approver("alice") as alice:
                    decided = await alice.post(f"/api/approvals/{approval.id}/approve")
                    assert decided.status_code == 200, decided.text
    result = outcome["result"]
    assert not result.is_error, result
    seen = json.loads(result.content[0].text)
    assert seen["x-agent"] == "trader"
    assert "authorization" not in seen


async def test_a_call_without_its_credential_is_a_tool_error_and_is_not_sent(
    tmp_path: Path, token_server: TokenServer, upstreams: dict[str, DemoHttpServer]
) -> None:
    servers = {
        "plain": {"url": upstreams["plain"].url, "agent_headers": {"X-Agent-Email": "{claims.email}"}},
        "docs": {
            "url": upstreams["docs"].url,
            "auth": {
                "type": "client_credentials",
                "token_url": token_server.token_url,
                "client_id": "broker",
                "client_secret": "broker-secret",
            },
        },
    }
    async with running_broker(make_settings(tmp_path, POLICY, servers)) as running:
        with anyio.fail_after(30):
            async with running.client("trader") as client:
                missing_claim = await client.call_tool("plain__echo", {"text": "hi"})
                token_server.down = True
                token_server.revoke_all()  # the upstream answers 401 and no new token can be had
                no_token = await client.call_tool("docs__echo", {"text": "hi"})
                assert (await client.list_tools()).tools  # and the broker serves on
    assert missing_claim.is_error and no_token.is_error
    assert "needs claim 'email'" in missing_claim.content[0].text  # type: ignore[union-attr]
    for refused in (missing_claim, no_token):
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "was not sent" in text and "reconnecting" not in text, text
    assert f"token endpoint {token_server.token_url} answered HTTP 503" in no_token.content[0].text  # type: ignore[union-attr]
