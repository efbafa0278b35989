"""Spend limits end to end with the official Python SDK client, a real broker and a real upstream:
reserve before forwarding, commit on success (an ``isError`` result counts), roll back on an
upstream JSON-RPC error, refuse a missing or non-numeric amount, and reserve a held call only when
it is released (a release over the limit fails with the reason)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from redis.asyncio import Redis

from broker.approvals.model import ApprovalStatus
from broker.config.rate_limits import RateLimitSettings
from tests.e2e.harness import REPO, make_settings, running_broker
from tests.e2e.test_approvals_flow import text_of, watch
from tests.e2e.test_grants_flow import Lines, approve
from tests.replicas.conftest import REDIS_URL, fresh_database

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
default: deny
rules:
  - tool: transfers
    action: allow
  - tool: transfer
    id: payouts
    action: allow
    limits:
      - {sum: args.amount, max: 100, window: 1d, align: calendar, reason: "100 a day per agent"}
      - {count: true, below: 6, window: 1h, per: global}
  - tool: transfer
    id: big-payouts
    when: {"args.amount": {"gt": 50}}
    action: require_approval
    timeout: 60
    limits:
      - {sum: args.amount, max: 100, window: 1d, align: calendar, counter: "payouts#0"}
"""


def payments() -> dict[str, Any]:
    return {
        "pay": {"command": sys.executable, "args": [str(REPO / "tests/upstream/servers/payments_server.py")]}
    }


async def test_spend_is_reserved_committed_and_rolled_back(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, payments())) as running:
        lines = Lines()
        running.broker.decisions.sink = lines
        with anyio.fail_after(60):
            async with running.client() as client:
                assert not (await client.call_tool("transfer", {"amount": 30})).is_error
                # The tool ran and said it failed: the spend counts.
                bounced = await client.call_tool("transfer", {"amount": 20, "fail": "tool"})
                assert bounced.is_error and "bounced" in text_of(bounced)
                # Refused upstream before anything happened: rolled back, as if never called.
                with pytest.raises(MCPError, match="refused the request"):
                    await client.call_tool("transfer", {"amount": 45, "fail": "rpc"})
                assert not (await client.call_tool("transfer", {"amount": 45})).is_error
                over = await client.call_tool("transfer", {"amount": 5.5})
                assert over.is_error
                text = text_of(over)
                assert (
                    "Spend limit reached" in text
                    and "would spend 5.5 with only 5 left of sum of args.amount <= 100 per 1d" in text
                )
                assert "100 a day per agent" in text and "policy rule payouts" in text
                assert "T00:00:00Z" in text  # a calendar day frees at midnight UTC
                assert not (await client.call_tool("transfer", {"amount": 5})).is_error

                for bad, words in [
                    ({}, "args.amount is missing"),
                    ({"amount": "5"}, "must be a JSON number, got str"),
                    ({"amount": -1}, "negative"),
                ]:
                    result = await client.call_tool("transfer", bad)
                    assert result.is_error and words in text_of(result), text_of(result)

                ran = await client.call_tool("transfers", {})
                assert ran.structured_content == {"result": [30.0, 20.0, 45.0, 5.0]}
        limited = [line for line in lines.lines if line.get("outcome") == "spend_limited"]
        assert len(limited) == 4


async def test_the_count_limit_is_global_and_strictly_below(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, payments())) as running:
        with anyio.fail_after(60):
            async with running.client("trader") as trader, running.client("auditor") as auditor:
                for n in range(5):
                    assert not (
                        await (trader if n % 2 else auditor).call_tool("transfer", {"amount": 1})
                    ).is_error
                sixth = await trader.call_tool("transfer", {"amount": 1})
                assert sixth.is_error and "would spend 1 call with 5 calls already spent" in text_of(sixth)


async def test_a_held_call_reserves_when_released(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, payments())) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client:
                outcome: dict[str, Any] = {}
                async with anyio.create_task_group() as tasks:

                    async def held() -> None:
                        outcome["held"] = await client.call_tool("transfer", {"amount": 60})

                    tasks.start_soon(held)
                    approval = await feed.opened.receive()
                    # While it waits, allowed transfers spend 50 of the shared 100.
                    assert not (await client.call_tool("transfer", {"amount": 50})).is_error
                    response = await approve(running, approval.id)
                    assert response.status_code == 200, response.text
                text = text_of(outcome["held"])
                assert outcome["held"].is_error and "Spend limit reached" in text, text
                assert "would spend 60 with only 50 left" in text, text
                stored = await running.broker.store.get(approval.id)
                assert stored.status is ApprovalStatus.FAILED
                ran = await client.call_tool("transfers", {})
                assert ran.structured_content == {"result": [50.0]}


SHARED_POLICY = """
version: "1"
default: deny
rules:
  - tool: transfers
    action: allow
  - tool: transfer
    action: allow
    limits: [{sum: args.amount, max: 100, window: 1h, per: global}]
"""


@pytest.mark.postgres
@pytest.mark.parametrize("ledger", ["postgresql", pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_replicas_share_one_budget_under_a_race(tmp_path: Path, ledger: str) -> None:
    """Two brokers on one PostgreSQL database (the second with its own upstream), 20 calls of 10
    racing over both for a budget of 100: exactly 10 go through, whichever replica they reach."""
    async with fresh_database("test_spend") as url:
        extra: dict[str, Any] = {"database_url": url}
        if ledger == "redis":
            extra["rate_limits"] = RateLimitSettings(backend="redis", redis_url=REDIS_URL)
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        settings = [make_settings(tmp_path / name, SHARED_POLICY, payments(), **extra) for name in ("a", "b")]
        async with running_broker(settings[0]) as first, running_broker(settings[1]) as second:
            expected = "PostgresSpendLedger" if ledger == "postgresql" else "RedisSpendLedger"
            assert type(first.broker.spend_ledger).__name__ == expected
            went: list[bool] = []
            with anyio.fail_after(60):
                async with first.client() as one, second.client("auditor") as two:

                    async def call(n: int) -> None:
                        result = await (one if n % 2 else two).call_tool("transfer", {"amount": 10})
                        went.append(not result.is_error)

                    async with anyio.create_task_group() as tasks:
                        for n in range(20):
                            tasks.start_soon(call, n)
                    totals = [
                        sum((await client.call_tool("transfers", {})).structured_content["result"])
                        for client in (one, two)
                    ]
            assert went.count(True) == 10
            assert sum(totals) == 100
        if ledger == "redis":
            await _forget_redis_counters()


async def _forget_redis_counters() -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match="broker:spend:*"):
            await client.delete(key)
    finally:
        await client.aclose()


GRANT_POLICY = """
version: "1"
default: deny
rules:
  - tool: transfers
    action: allow
  - tool: transfer
    action: require_approval
    timeout: 60
    grant: {max: 1h, max_calls: 10, scope: [matching], budget: {sum: args.amount, max: 50}}
"""


async def test_a_grant_budget_lets_calls_through_until_spent_then_holds(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, payments())) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client:

                async def held_and_approved(amount: int, grant: dict[str, Any] | None) -> None:
                    outcome: dict[str, Any] = {}
                    async with anyio.create_task_group() as tasks:

                        async def agent() -> None:
                            outcome["result"] = await client.call_tool("transfer", {"amount": amount})

                        tasks.start_soon(agent)
                        approval = await feed.opened.receive()
                        response = await approve(running, approval.id, grant)
                        assert response.status_code == 200, response.text
                    assert not outcome["result"].is_error, text_of(outcome["result"])

                # The approved call itself is the human's yes, not the grant's: it spends no budget.
                await held_and_approved(100, {"minutes": 30, "scope": "matching"})
                for amount in (30, 15):
                    passed = await client.call_tool("transfer", {"amount": amount})
                    assert not passed.is_error, text_of(passed)
                assert feed.opened.statistics().current_buffer_used == 0
                # 45 of 50 spent: the next 10 is not the grant's to give, so a human is asked again.
                await held_and_approved(10, None)
                ran = await client.call_tool("transfers", {})
                assert ran.structured_content == {"result": [100.0, 30.0, 15.0, 10.0]}
                # The grant let two calls through; the one its budget sent to a human is not its use.
                [grant] = await running.broker.grants.store.list()
                assert grant.used_calls == 2
