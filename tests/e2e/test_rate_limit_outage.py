"""Rate-limited tools when the shared counters cannot be reached: refused, and the agent is told why."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from broker.config.rate_limits import RateLimitSettings
from tests.e2e.harness import exchange_server, make_settings, running_broker

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
default: deny
rules:
  - tool: get_ticker
    action: allow
    rate_limit: {max: 5, window: 60}
  - tool: get_balances
    action: allow
"""


async def test_an_unreachable_counter_store_refuses_rate_limited_calls_and_says_so(tmp_path: Path) -> None:
    settings = replace(
        make_settings(tmp_path, POLICY, exchange_server()),
        rate_limits=RateLimitSettings(backend="redis", redis_url="redis://127.0.0.1:1/0"),
    )
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                refused = await client.call_tool("get_ticker", {"symbol": "BTCUSD"})
                allowed = await client.call_tool("get_balances", {})
    text = refused.content[0].text  # type: ignore[union-attr]
    assert refused.is_error and text.startswith("Not forwarded: 'get_ticker' is rate limited")
    assert "counters (Redis) are unreachable" in text and "Rate limit exceeded" not in text
    assert not allowed.is_error  # tools without a rate limit need no counting
