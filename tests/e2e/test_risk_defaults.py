"""`risk_defaults` end to end: the demo exchange's tools, rated by the catalogue, under `default: allow`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.e2e.harness import exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, text_of, watch

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
default: allow
risk_defaults:
  critical: {action: require_approval, timeout: 60, approvers: ["@trading-leads"]}
rules:
  - tool: binance_us_cust_cancel_order
    action: allow
  - tool: withdraw
    action: deny
"""


async def test_risky_tools_no_rule_names_are_held_or_denied_and_rules_still_win(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.client() as client:
                listed = {tool.name: tool for tool in (await client.list_tools()).tools}
                # Orders, cancels and withdrawals are all critical (issue 13's principle): the order
                # is held by the risk default, while the rules that name the cancel and the
                # withdrawal win over it, either way.
                assert "withdraw" not in listed
                assert {"get_ticker", "place_order", "binance_us_cust_cancel_order"} <= set(listed)
                assert listed["place_order"].execution is not None  # every call is held: offered as a task
                assert "check_approval" in listed

                assert not (await client.call_tool("get_ticker", {"symbol": "BTCUSD"})).is_error
                denied = await client.call_tool("withdraw", {"asset": "BTC", "amount": 1, "address": "x"})
                assert denied.is_error
                assert "rules[1] 'withdraw'" in text_of(denied)

                async with anyio.create_task_group() as tasks:
                    outcome: dict[str, Any] = {}

                    async def agent() -> None:
                        outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                    tasks.start_soon(agent)
                    approval = await feed.opened.receive()
                    assert approval.rule == "default (risk: critical \u2192 require_approval)"
                    assert "rates this tool critical risk" in approval.rule_reason
                    async with running.approver("mallory") as mallory:
                        # The entry's approvers apply: mallory is not in @trading-leads.
                        refused = await mallory.post(f"/api/approvals/{approval.id}/approve")
                        assert refused.status_code == 403, refused.text
                    async with running.approver("alice") as alice:
                        decided = await alice.post(f"/api/approvals/{approval.id}/approve")
                        assert decided.status_code == 200, decided.text
                assert not outcome["result"].is_error

            async with running.approver("alice") as alice:
                rows = {row["tool"]: row for row in (await alice.get("/api/tools")).json()["tools"]}
            assert rows["place_order"]["rule"] == "default (risk: critical \u2192 require_approval)"
            assert rows["withdraw"]["rule"] == "rules[1] 'withdraw'"
            assert rows["withdraw"]["listed"] is False
            assert rows["get_ticker"]["rule"] == "default"
            assert rows["binance_us_cust_cancel_order"]["rule"] == "rules[0] 'binance_us_cust_cancel_order'"
