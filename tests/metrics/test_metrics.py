"""Prometheus metrics: the hot-path counters, the approval listener, and /metrics on a real broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.approvals import Approval, ApprovalStatus, StoreUnavailable
from broker.observability import BrokerMetrics, CallCounts, LatencyHistogram, UpstreamLatency
from tests.e2e.harness import RunningBroker, exchange_server, make_settings, running_broker

POLICY = """
version: "1"
default: deny
hide: [binance_us_cust_cancel_order]
rules:
  - tool: get_ticker
    action: allow
  - tool: get_balances
    action: allow
    rate_limit: {max: 1, window: 600}
  - tool: withdraw
    action: deny
  - tool: place_order
    action: require_approval
    timeout: 60
  - tool: list_open_orders
    action: require_approval
    timeout: 1
"""


def samples(exposition: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    values = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def value(exposition: bytes, name: str, **labels: str) -> float:
    return samples(exposition).get((name, frozenset(labels.items())), 0.0)


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    histogram = LatencyHistogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert histogram.count == 5 and histogram.total == pytest.approx(8.65)
    with pytest.raises(ValueError, match="increasing"):
        LatencyHistogram((1.0, 0.5))
    with pytest.raises(ValueError, match="increasing"):
        UpstreamLatency(())


@pytest.mark.anyio
async def test_the_exposition_reads_the_counters_and_the_store_at_scrape_time() -> None:
    calls, latency = CallCounts(), UpstreamLatency((0.01, 0.1))
    pending = [3]

    async def pending_count() -> int:
        if pending[0] < 0:
            raise StoreUnavailable("database unreachable")
        return pending[0]

    metrics = BrokerMetrics(
        calls=calls, upstream_latency=latency, pending_count=pending_count, held_calls=lambda: 2
    )
    calls.allow += 2
    calls.rate_limited += 1
    latency.observe("exchange", 0.05)
    latency.observe("docs", 0.5)

    first = await metrics.render()
    assert value(first, "broker_tool_calls_total", action="allow") == 2
    assert value(first, "broker_tool_calls_total", action="rate_limited") == 1
    assert value(first, "broker_tool_calls_total", action="hide") == 0
    assert value(first, "broker_upstream_call_seconds_bucket", server="exchange", le="0.1") == 1
    assert value(first, "broker_upstream_call_seconds_bucket", server="docs", le="0.1") == 0
    assert value(first, "broker_upstream_call_seconds_count", server="docs") == 1
    assert value(first, "broker_approvals_pending") == 3
    assert value(first, "broker_held_calls") == 2
    assert value(first, "broker_store_up") == 1

    pending[0] = -1
    calls.allow += 1
    second = await metrics.render()
    assert value(second, "broker_tool_calls_total", action="allow") == 3
    assert value(second, "broker_store_up") == 0
    assert value(second, "broker_approvals_pending") == 3, "the last known depth stays"


class Settled:
    """Wakes the test when an approval reaches a status (the broker calls its listeners)."""

    def __init__(self) -> None:
        self.seen: list[Approval] = []
        self._changed = anyio.Event()

    async def approval_opened(self, approval: Approval) -> None:
        self._record(approval)

    async def approval_updated(self, approval: Approval) -> None:
        self._record(approval)

    def _record(self, approval: Approval) -> None:
        self.seen.append(approval)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, tool: str, status: ApprovalStatus) -> Approval:
        while True:
            for approval in self.seen:
                if approval.tool == tool and approval.status is status:
                    return approval
            await self._changed.wait()


async def scrape(running: RunningBroker) -> bytes:
    async with running.raw(None) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.content


@pytest.mark.anyio
async def test_a_broker_counts_its_calls_decisions_and_queue(tmp_path: Path) -> None:
    from dataclasses import replace

    settings = make_settings(tmp_path, POLICY, exchange_server())
    settings = replace(settings, approvals=replace(settings.approvals, hold_budget=0.3))
    async with running_broker(settings) as running:
        settled = Settled()
        running.broker.approvals.add_listener(settled)
        with anyio.fail_after(30):
            async with running.client() as client:
                for _ in range(3):
                    assert not (await client.call_tool("get_ticker", {"symbol": "BTCUSD"})).is_error
                assert not (await client.call_tool("get_balances", {})).is_error
                assert (await client.call_tool("get_balances", {})).is_error  # over its limit
                assert (
                    await client.call_tool("withdraw", {"asset": "BTC", "amount": 1, "address": "x"})
                ).is_error
                assert (
                    await client.call_tool("binance_us_cust_cancel_order", {"order_id": "ord-1"})
                ).is_error
                orders: list[Any] = []
                for price in (1, 2):
                    args = {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": price}
                    held = await client.call_tool("place_order", args)
                    orders.append(held.meta["io.github.mcp-approval-broker/approval"]["approvalId"])

                while_pending = await scrape(running)

                await client.call_tool("list_open_orders", {})
                await settled.until("list_open_orders", ApprovalStatus.EXPIRED)
                async with running.approver("alice") as alice:
                    assert (await alice.post(f"/api/approvals/{orders[0]}/approve")).status_code == 200
                    assert (await alice.post(f"/api/approvals/{orders[1]}/deny")).status_code == 200
                await settled.until("place_order", ApprovalStatus.COMPLETED)
            after = await scrape(running)

    assert value(while_pending, "broker_approvals_pending") == 2
    assert value(while_pending, "broker_approvals_opened_total") == 2
    assert value(after, "broker_approvals_pending") == 0
    for action, count in {"allow": 4, "rate_limited": 1, "deny": 1, "hide": 1, "require_approval": 3}.items():
        assert value(after, "broker_tool_calls_total", action=action) == count, action
    assert value(after, "broker_approval_decisions_total", outcome="approved", via="api") == 1
    assert value(after, "broker_approval_decisions_total", outcome="denied", via="api") == 1
    assert value(after, "broker_approval_decisions_total", outcome="expired", via="timeout") == 1
    assert value(after, "broker_approval_decision_seconds_count", outcome="expired") == 1
    assert value(after, "broker_approval_decision_seconds_bucket", outcome="expired", le="5.0") == 1
    assert value(after, "broker_approval_releases_total", outcome="completed") == 1
    # Four allowed calls and one released call reached the exchange.
    assert value(after, "broker_upstream_call_seconds_count", server="exchange") == 5
    assert value(after, "broker_store_up") == 1
