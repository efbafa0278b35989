"""Upstream credentials: the client-credentials grant against a real local authorization server,
an upstream that checks each bearer token by introspection, and per-agent header templates."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from broker.proxy.upstream.base import UpstreamUnavailable
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.client_credentials import (
    ClientCredentialsSettings,
    ClientCredentialsSource,
    metadata_urls,
)
from broker.proxy.upstream.credentials.errors import CredentialError
from broker.proxy.upstream.pool import UpstreamPool
from broker.proxy.upstream.spec import HttpServer, ServerConfigError, SseServer, parse_servers
from tests.upstream.support import DemoHttpServer
from tests.upstream.token_server import TokenServer, guarded_demo_server

pytestmark = pytest.mark.anyio

BROKER_CLIENT = ("broker", "broker-secret")
UPSTREAM_CLIENT = ("docs-api", "docs-secret")


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    async with TokenServer(clients=dict([BROKER_CLIENT, UPSTREAM_CLIENT])).running() as server:
        yield server


@pytest.fixture(params=["http", "sse"])
async def guarded_upstream(
    token_server: TokenServer, request: pytest.FixtureRequest
) -> AsyncIterator[DemoHttpServer]:
    """The demo server refusing any request whose bearer token the authorization server does not vouch
    for, over streamable HTTP and over legacy SSE (where the GET stream and each POST are checked)."""
    server = guarded_demo_server(token_server, UPSTREAM_CLIENT, mode=request.param)
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


def spec_for(entry: dict[str, Any], environ: dict[str, str] | None = None) -> HttpServer | SseServer:
    spec = parse_servers({"mcpServers": {"docs": entry}}, environ=environ or {})["docs"]
    assert isinstance(spec, HttpServer | SseServer)
    return spec


def grant(token_server: TokenServer, **overrides: str) -> dict[str, str]:
    return {
        "type": "client_credentials",
        "issuer": token_server.issuer,
        "client_id": BROKER_CLIENT[0],
        "client_secret": "${BROKER_SECRET}",
        "scope": "tools.call",
        "resource": "https://docs.internal/mcp",
        **overrides,
    }


@asynccontextmanager
async def connected_pool(spec: HttpServer | SseServer) -> AsyncIterator[UpstreamPool]:
    async with UpstreamPool({spec.name: spec}, environ={}) as pool:
        await pool.wait_ready(15)
        yield pool


async def seen_headers(pool: UpstreamPool, caller: UpstreamCaller | None = None) -> dict[str, str]:
    tool = pool.resolve("seen_headers")
    assert tool is not None
    with anyio.fail_after(15):
        result = await pool.call_tool(tool, {}, caller=caller)
    return dict(json.loads(result["content"][0]["text"]))


ENVIRON = {"BROKER_SECRET": BROKER_CLIENT[1]}


async def test_the_broker_fetches_a_token_once_and_presents_it_on_every_request(
    token_server: TokenServer, guarded_upstream: DemoHttpServer
) -> None:
    spec = spec_for({"url": guarded_upstream.url, "auth": grant(token_server)}, ENVIRON)
    async with connected_pool(spec) as pool:
        assert pool.is_connected("docs"), pool.status()
        first = await seen_headers(pool, UpstreamCaller("trader"))
        second = await seen_headers(pool, UpstreamCaller("auditor"))
    tokens = list(token_server.issued)
    assert len(tokens) == 1 and token_server.subjects[tokens[0]] == BROKER_CLIENT[0]
    assert first["authorization"] == second["authorization"] == f"Bearer {tokens[0]}"
    assert token_server.requests == [
        {"grant_type": "client_credentials", "scope": "tools.call", "resource": "https://docs.internal/mcp"}
    ]


async def test_without_credentials_the_guarded_upstream_refuses(guarded_upstream: DemoHttpServer) -> None:
    async with connected_pool(spec_for({"url": guarded_upstream.url})) as pool:
        assert not pool.is_connected("docs")
        (status,) = pool.status()
    assert status.last_error is not None and "401" in status.last_error


async def test_a_token_the_upstream_rejects_is_replaced_and_the_request_sent_again(
    token_server: TokenServer, guarded_upstream: DemoHttpServer
) -> None:
    spec = spec_for({"url": guarded_upstream.url, "auth": grant(token_server)}, ENVIRON)
    async with connected_pool(spec) as pool:
        before = await seen_headers(pool)
        token_server.revoke_all()  # as an expiry the broker could not see coming
        after = await seen_headers(pool)
    assert before["authorization"] != after["authorization"]
    assert after["authorization"] == f"Bearer {next(iter(token_server.issued))}"
    assert len(token_server.requests) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"down": True}, "answered HTTP 503: maintenance"),
        ({"secret": "wrong"}, "answered HTTP 401: invalid_client"),
        ({"garbage": True}, "did not answer with a bearer access token"),
    ],
)
async def test_no_token_means_no_call_and_a_clear_reason(
    token_server: TokenServer, guarded_upstream: DemoHttpServer, change: dict[str, Any], message: str
) -> None:
    token_server.down = change.get("down", False)
    token_server.garbage = change.get("garbage", False)
    environ = {"BROKER_SECRET": change.get("secret", BROKER_CLIENT[1])}
    spec = spec_for({"url": guarded_upstream.url, "auth": grant(token_server)}, environ)
    async with connected_pool(spec) as pool:
        (status,) = pool.status()
    assert status.state != "connected"
    assert status.last_error is not None
    assert f"token endpoint {token_server.token_url} {message}" in status.last_error


async def test_token_exchange_gives_each_agent_its_own_upstream_token(
    token_server: TokenServer, guarded_upstream: DemoHttpServer
) -> None:
    auth = grant(token_server, type="token_exchange", audience="docs-api")
    spec = spec_for({"url": guarded_upstream.url, "auth": auth}, ENVIRON)
    trader_token, auditor_token = token_server.mint("trader"), token_server.mint("auditor")
    async with connected_pool(spec) as pool:
        assert pool.is_connected("docs"), pool.status()  # the handshake used the broker's own token
        trader = await seen_headers(pool, UpstreamCaller("trader", {"sub": "trader"}, trader_token))
        again = await seen_headers(pool, UpstreamCaller("trader", {"sub": "trader"}, trader_token))
        auditor = await seen_headers(pool, UpstreamCaller("auditor", {"sub": "auditor"}, auditor_token))
        with pytest.raises(UpstreamUnavailable, match="agent 'keyed' did not sign in with OAuth"):
            await seen_headers(pool, UpstreamCaller("keyed"))
        with pytest.raises(UpstreamUnavailable, match="invalid_grant"):
            await seen_headers(pool, UpstreamCaller("forger", {}, "not-a-token"))
    sent = {
        agent: headers["authorization"].removeprefix("Bearer ")
        for agent, headers in (("trader", trader), ("auditor", auditor))
    }
    assert again == trader  # cached per agent until it expires
    assert {agent: token_server.subjects[token] for agent, token in sent.items()} == {
        "trader": "trader",
        "auditor": "auditor",
    }
    assert trader_token not in sent.values() and auditor_token not in sent.values()
    exchanges = [form for form in token_server.requests if form["grant_type"].endswith("token-exchange")]
    assert [form["subject_token"] for form in exchanges] == [trader_token, auditor_token, "not-a-token"]
    assert exchanges[0]["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert exchanges[0]["audience"] == "docs-api"


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_tokens_are_refreshed_in_the_background_before_they_expire(token_server: TokenServer) -> None:
    token_server.lifetime = 100
    clock = ManualClock()
    settings = ClientCredentialsSettings(
        client_id=BROKER_CLIENT[0],
        client_secret=BROKER_CLIENT[1],
        token_url=token_server.token_url,
        issuer=None,
    )
    source = ClientCredentialsSource(settings, server="docs", clock=clock)
    try:
        with anyio.fail_after(10):
            first = await source.bearer()
            clock.now += 50
            assert await source.bearer() == first and source.fetches == 1
            clock.now += 30  # past three quarters of its life: still valid, refreshed behind the call
            assert await source.bearer() == first
            await source.wait_refreshed()
            assert source.fetches == 2
            second = await source.bearer()
            assert second != first
            token_server.down = True
            clock.now += 200  # both expired; nothing valid is left, so the call waits and fails
            with pytest.raises(CredentialError, match="503"):
                await source.bearer()
    finally:
        await source.aclose()


def test_metadata_is_looked_up_where_rfc_8414_and_openid_connect_put_it() -> None:
    assert metadata_urls("https://login.example.com/tenant") == [
        "https://login.example.com/.well-known/oauth-authorization-server/tenant",
        "https://login.example.com/.well-known/openid-configuration/tenant",
        "https://login.example.com/tenant/.well-known/openid-configuration",
    ]
    assert metadata_urls("https://login.example.com") == [
        "https://login.example.com/.well-known/oauth-authorization-server",
        "https://login.example.com/.well-known/openid-configuration",
    ]


@pytest.mark.parametrize("mode", ["http", "sse"])
async def test_agent_headers_name_the_agent_and_its_claims(
    shared_http_servers: dict[str, DemoHttpServer], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    templates = {"X-Agent": "{agent}", "X-Agent-Email": "{claims.email}", "X-Team": "team-{claims.team}"}
    spec = spec_for({"url": shared_http_servers[mode].url, "agent_headers": templates})
    assert spec.auth is not None and (mode == "sse") == isinstance(spec, SseServer)
    async with connected_pool(spec) as pool:
        seen = await seen_headers(pool, UpstreamCaller("trader", {"email": "t@example.com", "team": 7}))
        assert (seen["x-agent"], seen["x-agent-email"], seen["x-team"]) == (
            "trader",
            "t@example.com",
            "team-7",
        )
        with pytest.raises(UpstreamUnavailable, match=r"needs claim 'email'.*API key"):
            await seen_headers(pool, UpstreamCaller("api-key-agent"))
        with pytest.raises(UpstreamUnavailable, match="control character"):
            await seen_headers(pool, UpstreamCaller("evil", {"email": "x@y\r\nX-Admin: 1", "team": 1}))
        with pytest.raises(UpstreamUnavailable, match="longer than 1024"):
            await seen_headers(pool, UpstreamCaller("big", {"email": "x" * 2000, "team": 1}))
        assert pool.is_connected("docs")  # a refused call leaves the connection alone
    refusals = [
        record.getMessage() for record in caplog.records if "not sent for agent" in record.getMessage()
    ]
    assert len(refusals) == 3 and "upstream 'docs': POST not sent for agent 'api-key-agent'" in refusals[0]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"auth": {"type": "password"}}, "'auth.type' must be one of client_credentials, token_exchange"),
        (
            {"auth": {"type": "client_credentials", "client_id": "b", "token_url": "https://t"}},
            "'auth.client_secret' is required",
        ),
        (
            {"auth": {"type": "client_credentials", "client_id": "b", "client_secret": "s"}},
            "needs a 'token_url' or an 'issuer'",
        ),
        (
            {
                "auth": {
                    "type": "client_credentials",
                    "client_id": "b",
                    "client_secret": "${NOPE}",
                    "issuer": "https://i",
                }
            },
            "'auth.client_secret' references undefined environment variable 'NOPE'",
        ),
        (
            {"auth": {"type": "client_credentials", "client_ide": "b"}},
            "'auth.client_ide' is not a known setting",
        ),
        (
            {
                "auth": {
                    "type": "client_credentials",
                    "client_id": "b",
                    "client_secret": "s",
                    "issuer": "https://i",
                },
                "headers": {"Authorization": "Bearer x"},
            },
            "'auth' sets the Authorization header",
        ),
        ({"agent_headers": {"X-Agent": "{agnet}"}}, "unknown placeholder '{agnet}'"),
        ({"agent_headers": {"Host": "{agent}"}}, "'agent_headers.Host' is not a header the broker may set"),
        ({"agent_headers": {"X-Agent": "{agent"}}, "'agent_headers.X-Agent' has an unmatched brace"),
    ],
)
def test_credential_settings_are_checked_at_startup(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ServerConfigError, match="server 'docs': ") as error:
        parse_servers({"mcpServers": {"docs": {"url": "https://h/mcp", **entry}}}, environ={})
    assert message in str(error.value)
