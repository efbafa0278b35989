"""The broker as an OAuth 2.1 protected resource, end to end: the official MCP Python SDK client
discovers the local authorization server from the broker's 401 and RFC 9728 metadata, registers
itself, signs in with PKCE, and calls tools as the agent its token names; API keys keep working."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from broker.config.oauth import OAuthSettings
from tests.authserver.server import AuthServer
from tests.e2e.harness import RunningBroker, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import watch

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
default: deny
rules:
  - tool: get_ticker
    action: allow
  - tool: place_order
    action: allow
    agents: [bob]
  - tool: get_balances
    action: allow
    when:
      "claims.groups": {contains: approvers}
  - tool: list_open_orders
    action: require_approval
    timeout: 60
"""
ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": 1000}


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def oauth_broker(tmp_path: Path, auth: AuthServer, **oauth: Any) -> AsyncIterator[RunningBroker]:
    port = free_port()
    settings = OAuthSettings(
        issuer=auth.issuer, resource=f"http://127.0.0.1:{port}/mcp", required_scopes=("tools:call",), **oauth
    )
    base = make_settings(tmp_path, POLICY, exchange_server())
    async with running_broker(replace(base, oauth=settings), port=port) as running:
        yield running


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class HeadlessUser:
    """Plays the browser: opens the authorization URL and reads the code off the redirect."""

    def __init__(self) -> None:
        self.redirect: str | None = None

    async def open(self, url: str) -> None:
        async with httpx2.AsyncClient(timeout=10) as http:
            answer = await http.get(url)
        assert answer.status_code == 302, answer.text
        self.redirect = answer.headers["location"]

    async def callback(self) -> AuthorizationCodeResult:
        assert self.redirect is not None
        query = parse_qs(urlparse(self.redirect).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0])


def sdk_client(running: RunningBroker, storage: MemoryStorage) -> Client:
    user = HeadlessUser()
    provider = OAuthClientProvider(
        server_url=f"{running.url}/mcp",
        client_metadata=OAuthClientMetadata(
            redirect_uris=["http://127.0.0.1:1/callback"],
            client_name="sdk test",
            grant_types=["authorization_code", "refresh_token"],
        ),
        storage=storage,
        redirect_handler=user.open,
        callback_handler=user.callback,
    )
    http = httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30, read=60))
    return Client(streamable_http_client(f"{running.url}/mcp", http_client=http), mode="legacy")


async def test_metadata_and_challenges_follow_rfc_9728_and_6750(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with oauth_broker(tmp_path, auth_server) as running, running.raw(None) as http:
        with anyio.fail_after(30):
            resource = f"{running.url}/mcp"
            for path in (
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource",
            ):
                document = (await http.get(path)).json()
                assert document["resource"] == resource
                assert document["authorization_servers"] == [auth_server.issuer]
                assert document["bearer_methods_supported"] == ["header"]
                assert document["scopes_supported"] == ["tools:call"]

            missing = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert missing.status_code == 401
            challenge = missing.headers["www-authenticate"]
            assert challenge.startswith("Bearer ") and "error=" not in challenge
            assert f'resource_metadata="{running.url}/.well-known/oauth-protected-resource/mcp"' in challenge
            assert 'scope="tools:call"' in challenge
            assert missing.json()["error"]["message"].startswith("Unauthorized")

            expired = await http.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Authorization": f"Bearer {auth_server.expired_token(aud=resource)}"},
            )
            assert (
                expired.status_code == 401 and 'error="invalid_token"' in expired.headers["www-authenticate"]
            )

            narrow = await http.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Authorization": f"Bearer {auth_server.token(aud=resource, scope='tools:read')}"},
            )
            assert (
                narrow.status_code == 403
                and 'error="insufficient_scope"' in narrow.headers["www-authenticate"]
            )

            # Tokens go in the header only: one in the query string is not looked at.
            token = auth_server.token(aud=resource)
            in_query = await http.post(
                f"/mcp?access_token={token}", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
            )
            assert in_query.status_code == 401


async def test_the_sdk_client_signs_in_and_the_policy_sees_the_agent_its_token_names(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with oauth_broker(tmp_path, auth_server) as running:
        with anyio.fail_after(60):
            auth_server.login_as = "bob"
            bob = MemoryStorage()
            async with sdk_client(running, bob) as client:
                ticker = await client.call_tool("get_ticker", {"symbol": "BTCUSD"})
                assert not ticker.is_error, text_of(ticker)
                placed = await client.call_tool("place_order", ORDER)
                assert not placed.is_error, text_of(placed)
            assert bob.client is not None and bob.tokens is not None  # registered, then signed in
            issued = auth_server.issued[-1]
            assert issued["sub"] == "bob" and issued["aud"] == f"{running.url}/mcp"

            auth_server.login_as = "alice"
            async with sdk_client(running, MemoryStorage()) as client:
                denied = await client.call_tool("place_order", ORDER)
                assert denied.is_error and "Policy violation" in text_of(denied)
                assert not (await client.call_tool("get_ticker", {"symbol": "BTCUSD"})).is_error

            # Static API keys keep working on the same broker.
            async with running.client("trader") as client:
                assert not (await client.call_tool("get_ticker", {"symbol": "BTCUSD"})).is_error


async def test_rules_can_test_the_token_claims(tmp_path: Path, auth_server: AuthServer) -> None:
    async with oauth_broker(tmp_path, auth_server) as running:
        resource = f"{running.url}/mcp"
        with anyio.fail_after(60):
            async with running.client(key=auth_server.token("alice", aud=resource)) as client:
                balances = await client.call_tool("get_balances", {})
                assert not balances.is_error, text_of(balances)
            async with running.client(key=auth_server.token("carol", aud=resource)) as client:
                refused = await client.call_tool("get_balances", {})
                assert refused.is_error and "Policy violation" in text_of(refused)
            # API-key agents have no claims: the same rule does not admit them.
            async with running.client("trader") as client:
                assert (await client.call_tool("get_balances", {})).is_error


async def test_a_held_call_records_the_agent_the_token_names(tmp_path: Path, auth_server: AuthServer) -> None:
    async with oauth_broker(tmp_path, auth_server, agent_claim="client_id") as running:
        feed = watch(running)
        token = auth_server.token("carol", aud=f"{running.url}/mcp", client_id="research-assistant")
        with anyio.fail_after(30):
            async with running.client(key=token) as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("list_open_orders", {})

                tasks.start_soon(agent)
                approval = await feed.opened.receive()
                assert approval.agent == "research-assistant"
                async with running.approver("alice") as alice:
                    decided = await alice.post(
                        f"/api/approvals/{approval.id}/deny", json={"reason": "not now"}
                    )
                    assert decided.status_code == 200, decided.text
            assert outcome["result"].is_error and "not now" in text_of(outcome["result"])
