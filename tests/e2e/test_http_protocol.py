"""Bad input on the agent endpoint: every case gets a clear JSON-RPC error and the broker stays up."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.e2e.harness import AGENT_KEYS, exchange_server, make_settings, running_broker

pytestmark = pytest.mark.anyio

POLICY = '{"version": "1", "default": "allow", "hide": ["withdraw"]}'
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


async def test_authentication_is_required(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        with anyio.fail_after(20):
            async with running.raw(agent=None) as http:
                missing = await http.post("/mcp", json=INIT, headers=ACCEPT)
                assert missing.status_code == 401
                assert missing.headers["www-authenticate"].startswith("Bearer")
                wrong = await http.post("/mcp", json=INIT, headers={**ACCEPT, "Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                assert "API key" in wrong.json()["error"]["message"]


async def test_anonymous_agents_only_when_configured(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, POLICY, exchange_server(), allow_anonymous=True)
    async with running_broker(settings) as running:
        with anyio.fail_after(20):
            async with running.raw(agent=None) as http:
                response = await http.post("/mcp", json=INIT, headers=ACCEPT)
                assert response.status_code == 200
                assert response.json()["result"]["serverInfo"]["name"] == "mcp-approval-broker"


async def test_malformed_messages_get_json_rpc_errors(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        with anyio.fail_after(20):
            async with running.raw() as http:
                parse = await http.post("/mcp", content=b"{not json", headers=ACCEPT)
                assert parse.status_code == 400 and parse.json()["error"]["code"] == -32700

                batch = await http.post("/mcp", json=[INIT], headers=ACCEPT)
                assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600

                version = await http.post(
                    "/mcp", json={"jsonrpc": "1.0", "id": 1, "method": "x"}, headers=ACCEPT
                )
                assert version.status_code == 400 and version.json()["error"]["code"] == -32600

                bad_id = await http.post(
                    "/mcp", json={"jsonrpc": "2.0", "id": True, "method": "x"}, headers=ACCEPT
                )
                assert bad_id.status_code == 400

                no_session = await http.post(
                    "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=ACCEPT
                )
                assert no_session.status_code == 400 and "initialize" in no_session.json()["error"]["message"]

                unknown = await http.post(
                    "/mcp",
                    json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                    headers={**ACCEPT, "Mcp-Session-Id": "deadbeef"},
                )
                assert unknown.status_code == 404

                put = await http.put("/mcp", json=INIT, headers=ACCEPT)
                assert put.status_code == 405

                too_big = await http.post(
                    "/mcp", content=b"[" + b" " * (5 * 1024 * 1024) + b"]", headers=ACCEPT
                )
                assert too_big.status_code == 413

                # After all that, a normal session still works.
                init = await http.post("/mcp", json=INIT, headers=ACCEPT)
                session = {**ACCEPT, "Mcp-Session-Id": init.headers["mcp-session-id"]}
                calls = [
                    ({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 5}}, -32602),
                    (
                        {
                            "jsonrpc": "2.0",
                            "id": 4,
                            "method": "tools/call",
                            "params": {"name": "get_ticker", "arguments": []},
                        },
                        -32602,
                    ),
                    ({"jsonrpc": "2.0", "id": 5, "method": "tools/call"}, -32602),
                    ({"jsonrpc": "2.0", "id": 6, "method": "resources/list"}, -32601),
                    ({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": "x"}, -32602),
                ]
                for message, code in calls:
                    response = await http.post("/mcp", json=message, headers=session)
                    assert response.json()["error"]["code"] == code, message
                ok = await http.post(
                    "/mcp",
                    json={
                        "jsonrpc": "2.0",
                        "id": 8,
                        "method": "tools/call",
                        "params": {"name": "get_balances"},
                    },
                    headers=session,
                )
                assert ok.status_code == 200 and ok.json()["result"]["isError"] is False


async def test_a_session_belongs_to_the_agent_that_opened_it(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        with anyio.fail_after(20):
            async with running.raw("trader") as trader, running.raw("auditor") as auditor:
                init = await trader.post("/mcp", json=INIT, headers=ACCEPT)
                stolen = await auditor.post(
                    "/mcp",
                    json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                    headers={**ACCEPT, "Mcp-Session-Id": init.headers["mcp-session-id"]},
                )
                assert stolen.status_code == 404
                assert AGENT_KEYS["auditor"] not in stolen.text


async def test_modern_requests_with_mismatched_headers_are_rejected(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        with anyio.fail_after(20):
            async with running.raw() as http:
                meta = {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                }
                message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
                mismatch = await http.post(
                    "/mcp",
                    json=message,
                    headers={**ACCEPT, "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"},
                )
                assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
                ok = await http.post(
                    "/mcp",
                    json=message,
                    headers={**ACCEPT, "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"},
                )
                assert ok.status_code == 200
                assert {tool["name"] for tool in ok.json()["result"]["tools"]} >= {
                    "get_ticker",
                    "place_order",
                }
                assert "withdraw" not in {tool["name"] for tool in ok.json()["result"]["tools"]}
