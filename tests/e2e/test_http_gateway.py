"""The SDK's own client, both protocol eras, against the broker in front of the demo exchange."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.e2e.harness import exchange_server, make_settings, running_broker

pytestmark = pytest.mark.anyio

EXCHANGE_POLICY = """
version: "1"
default: deny
hide: [binance_us_cust_cancel_order]
rules:
  - tool: "get_*"
    action: allow
  - tool: place_order
    action: allow
    rate_limit: {max: 2, window: 60}
  - tool: withdraw
    action: deny
    reason: withdrawals are never automated
  - tool: list_open_orders
    action: allow
    agents: [auditor]
"""

SEED_POLICY = '{"version": "1", "default": "deny", "hide": ["binance_us_cust_cancel_order"]}'


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_listing_shows_only_what_the_policy_lets_the_agent_call(tmp_path: Path, mode: str) -> None:
    async with running_broker(make_settings(tmp_path, EXCHANGE_POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            async with running.client("trader", mode=mode) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert names == {"get_ticker", "get_balances", "place_order"}
            async with running.client("auditor", mode=mode) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert "list_open_orders" in names
                assert "binance_us_cust_cancel_order" not in names


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_allowed_call_returns_the_upstream_result(tmp_path: Path, mode: str) -> None:
    async with running_broker(make_settings(tmp_path, EXCHANGE_POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            async with running.client(mode=mode) as client:
                result = await client.call_tool("get_ticker", {"symbol": "BTCUSD"})
                assert not result.is_error
                assert result.structured_content == {"symbol": "BTCUSD", "price": 97250.0}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_denied_hidden_and_unknown_tools_are_told_apart(tmp_path: Path, mode: str) -> None:
    async with running_broker(make_settings(tmp_path, EXCHANGE_POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            async with running.client(mode=mode) as client:
                denied = await client.call_tool("withdraw", {"asset": "BTC", "amount": 1, "address": "x"})
                assert denied.is_error
                assert "Policy violation" in text_of(denied)
                assert "withdrawals are never automated" in text_of(denied)
                assert "rules[2]" in text_of(denied)

                hidden = await client.call_tool("binance_us_cust_cancel_order", {"order_id": "ord-1001"})
                assert hidden.is_error
                assert "Policy violation" in text_of(hidden)
                assert "hide[0]" in text_of(hidden)

                defaulted = await client.call_tool("list_open_orders", {})
                assert defaulted.is_error
                assert "default" in text_of(defaulted)

                with pytest.raises(MCPError) as unknown:
                    await client.call_tool("no_such_tool", {})
                assert unknown.value.code == -32602
                assert "Unknown tool" in unknown.value.message


async def test_the_seed_policy_hides_the_cancel_tool_and_denies_everything_else(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, SEED_POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                assert (await client.list_tools()).tools == []
                hidden = await client.call_tool("binance_us_cust_cancel_order", {"order_id": "ord-1"})
                assert hidden.is_error and "hidden by policy" in text_of(hidden)
                ticker = await client.call_tool("get_ticker", {"symbol": "BTCUSD"})
                assert ticker.is_error and "default" in text_of(ticker)


async def test_rate_limit_is_counted_per_session_and_says_when_to_retry(tmp_path: Path) -> None:
    order = {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": 1000}
    async with running_broker(make_settings(tmp_path, EXCHANGE_POLICY, exchange_server())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                assert not (await client.call_tool("place_order", order)).is_error
                assert not (await client.call_tool("place_order", order)).is_error
                limited = await client.call_tool("place_order", order)
                assert limited.is_error
                assert "Rate limit exceeded" in text_of(limited)
                assert "Retry after" in text_of(limited)
                # Other tools are counted separately.
                assert not (await client.call_tool("get_balances", {})).is_error
            async with running.client() as fresh_session:
                assert not (await fresh_session.call_tool("place_order", order)).is_error


async def test_policy_reload_changes_listing_and_notifies_agents(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EXCHANGE_POLICY, exchange_server())
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            changed.set()

    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            client = running.client()
            client.message_handler = on_message
            async with client:
                before = {tool.name for tool in (await client.list_tools()).tools}
                assert "withdraw" not in before
                if running.broker.changes.subscriber_count == 0:
                    await running.broker.changes.wait_for_subscriber()
                settings.policy_path.write_text(EXCHANGE_POLICY.replace("action: deny", "action: allow"))
                outcome = running.broker.policy_file.reload()
                assert outcome.changed
                await changed.wait()
                after = {tool.name for tool in (await client.list_tools()).tools}
                assert "withdraw" in after

                settings.policy_path.write_text("version: '1'\nrules:\n  - tool: x\n    acton: allow\n")
                rejected = running.broker.policy_file.reload()
                assert not rejected.changed and rejected.error is not None
                assert ":4:" in rejected.error
                assert running.broker.policy_file.holder.current.revision == outcome.revision
