"""The TypeScript SDK's client with an access token from the client_credentials grant."""

from __future__ import annotations

from pathlib import Path

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
