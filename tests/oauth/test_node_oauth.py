"""The TypeScript SDK's client against the broker as an OAuth protected resource: with a
client_credentials token passed as a static bearer, and doing the whole flow itself through its
`authProvider` (discovery from the broker's 401, registration, PKCE, `resource`, refresh, step-up)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2

from tests.authserver.server import AuthServer
from tests.e2e.test_node_peers import pytestmark as node_marks
from tests.e2e.test_node_peers import run_node_client, text_of
from tests.oauth.test_oauth_flow import ORDER, oauth_broker

pytestmark = node_marks


async def client_credentials_token(auth: AuthServer, client_id: str, secret: str, resource: str) -> str:
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{auth.url}/token",
            data={"grant_type": "client_credentials", "scope": "tools:call", "resource": resource},
            auth=(client_id, secret),
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def test_the_typescript_client_calls_as_the_client_its_token_names(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    bob_id, bob_secret = auth_server.register_client(client_id="bob")
    other_id, other_secret = auth_server.register_client(client_id="reporting")
    steps = [
        {"op": "call_tool", "name": "get_ticker", "arguments": {"symbol": "BTCUSD"}},
        {"op": "call_tool", "name": "place_order", "arguments": ORDER},
    ]
    async with oauth_broker(tmp_path, auth_server) as running:
        url = f"{running.url}/mcp"
        with anyio.fail_after(60):
            bob = await client_credentials_token(auth_server, bob_id, bob_secret, url)
            ticker, placed = await run_node_client(url, steps, api_key=bob)
            other = await client_credentials_token(auth_server, other_id, other_secret, url)
            _, refused = await run_node_client(url, steps, api_key=other)
            elsewhere = await client_credentials_token(
                auth_server, bob_id, bob_secret, "http://other.test/mcp"
            )
            [wrong_audience] = await run_node_client(url, steps[:1], api_key=elsewhere)

    assert ticker["ok"] and not ticker["result"].get("isError", False)
    assert placed["ok"] and not placed["result"].get("isError", False), placed
    assert refused["ok"] and refused["result"]["isError"] is True
    assert text_of(refused["result"]).startswith("Policy violation")
    assert wrong_audience["op"] == "connect" and not wrong_audience["ok"]
    assert wrong_audience["error"]["httpStatus"] == 401


REDIRECT_URI = "http://127.0.0.1:1/callback"
CREDENTIAL_LINES = {"authorize", "save_client_information", "save_tokens"}
TICKER = {"op": "call_tool", "name": "get_ticker", "arguments": {"symbol": "BTCUSD"}}
PLACE = {"op": "call_tool", "name": "place_order", "arguments": ORDER}
HTTP_FAILURES = {"op": "http_failures"}
Line = dict[str, Any]


async def signing_in(url: str, steps: list[Line], **oauth: Any) -> tuple[list[Line], list[Line]]:
    """Runs the TypeScript client with its own OAuth provider (tests/node/oauth.mjs); returns what
    the SDK handed the provider (authorization requests, registrations, tokens) and the step lines."""
    lines = await run_node_client(url, steps, oauth={"redirectUri": REDIRECT_URI, **oauth})
    credentials = [line for line in lines if line["op"] in CREDENTIAL_LINES]
    return credentials, [line for line in lines if line["op"] not in CREDENTIAL_LINES]


@asynccontextmanager
async def broker_signing_in(tmp_path: Path, auth: AuthServer, user: str = "bob") -> AsyncIterator[str]:
    """The broker's MCP URL, with `user` signing in at the authorization server's consent."""
    auth.login_as = user
    async with oauth_broker(tmp_path, auth) as running:
        with anyio.fail_after(60):
            yield f"{running.url}/mcp"


def of(lines: list[Line], op: str) -> list[Line]:
    return [line for line in lines if line["op"] == op]


def succeeded(line: Line) -> bool:
    return bool(line["ok"]) and not line["result"].get("isError", False)


async def test_the_typescript_client_signs_in_with_pkce_and_calls_as_the_agent_its_token_names(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with broker_signing_in(tmp_path, auth_server) as url:
        bob, (challenges, ticker, placed) = await signing_in(
            url, [HTTP_FAILURES, TICKER, PLACE], clientName="ts sdk test"
        )
        auth_server.login_as = "alice"
        _, (refused, allowed) = await signing_in(url, [PLACE, TICKER])

    # Told only the broker's URL, the client met its 401 and found the authorization server from it.
    first = challenges["result"][0]
    assert (first["url"], first["status"]) == (url, 401)
    assert (
        f'resource_metadata="{url.removesuffix("/mcp")}/.well-known/oauth-protected-resource/mcp"'
        in first["wwwAuthenticate"]
    )
    registered, authorize, tokens = bob
    client = registered["clientInformation"]
    assert auth_server.clients[client["client_id"]].metadata["client_name"] == "ts sdk test"  # RFC 7591
    assert authorize["params"]["client_id"] == client["client_id"]
    assert authorize["params"]["code_challenge_method"] == "S256"
    assert authorize["params"]["resource"] == url  # RFC 8707
    granted = auth_server.authorizations[0]
    assert (granted.client_id, granted.code_challenge_method, granted.resource, granted.scope) == (
        client["client_id"],
        "S256",
        url,
        "tools:call",
    )
    assert tokens["tokens"]["refresh_token"]
    issued = auth_server.issued[0]
    assert (issued["sub"], issued["aud"], issued["client_id"]) == ("bob", url, client["client_id"])

    assert succeeded(ticker), ticker
    assert succeeded(placed), placed
    assert refused["ok"] and refused["result"]["isError"] is True
    assert text_of(refused["result"]).startswith("Policy violation")
    assert succeeded(allowed), allowed
    assert [grant.code_challenge_method for grant in auth_server.authorizations] == ["S256", "S256"]


async def test_a_restarted_typescript_client_refreshes_its_expired_token_and_the_call_goes_through(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with broker_signing_in(tmp_path, auth_server) as url:
        (registered, _, saved), _ = await signing_in(url, [TICKER])
        client, tokens = registered["clientInformation"], saved["tokens"]
        # Time passes while the client is down: its access token has expired when it comes back.
        expired = auth_server.expired_token("bob", aud=url, client_id=client["client_id"])
        stored = {"clientInformation": client, "tokens": tokens | {"access_token": expired}}
        again, (challenges, placed) = await signing_in(url, [HTTP_FAILURES, PLACE], **stored)

    assert [line["op"] for line in again] == ["save_tokens"]  # no new registration, no new sign-in
    [challenge] = challenges["result"]
    assert challenge["status"] == 401 and 'error="invalid_token"' in challenge["wwwAuthenticate"]
    assert auth_server.refresh_tokens[tokens["refresh_token"]].revoked  # used, by the refresh grant
    assert again[0]["tokens"]["access_token"] not in (tokens["access_token"], expired)
    assert len(auth_server.authorizations) == 1
    refreshed = auth_server.issued[-1]
    assert (refreshed["sub"], refreshed["aud"]) == ("bob", url)
    assert succeeded(placed), placed


async def test_a_typescript_client_whose_token_lacks_the_scope_signs_in_again_for_it(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with broker_signing_in(tmp_path, auth_server) as url:
        narrow = {
            "access_token": auth_server.token("bob", aud=url, scope="tools:read"),
            "token_type": "Bearer",
        }
        stepped_up, (challenges, placed) = await signing_in(url, [HTTP_FAILURES, PLACE], tokens=narrow)

    first = challenges["result"][0]
    assert first["status"] == 403 and 'error="insufficient_scope"' in first["wwwAuthenticate"]
    [authorize] = of(stepped_up, "authorize")
    assert authorize["params"]["scope"] == "tools:call"
    [granted] = auth_server.authorizations
    assert (granted.scope, granted.code_challenge_method, granted.resource) == ("tools:call", "S256", url)
    [tokens] = of(stepped_up, "save_tokens")
    assert tokens["tokens"]["scope"] == "tools:call"
    assert succeeded(placed), placed


async def test_a_token_the_typescript_client_asked_for_another_resource_is_refused(
    tmp_path: Path, auth_server: AuthServer
) -> None:
    async with broker_signing_in(tmp_path, auth_server) as url:
        _, [refused] = await signing_in(url, [TICKER], resource="http://other.test/mcp")

    assert auth_server.authorizations[0].resource == "http://other.test/mcp"
    assert auth_server.issued[0]["aud"] == "http://other.test/mcp"
    assert refused["op"] == "connect" and not refused["ok"]
    assert refused["error"]["httpStatus"] == 401
