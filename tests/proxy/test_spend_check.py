"""The spend check on its own: refusal texts, exact window arithmetic with an injected clock, and
failing closed when the ledger cannot be reached (a real Redis client against a closed port)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.approvals.spending import Reservation
from broker.policy.loader import load_policy
from broker.proxy.checks.spend import SpendBlocked, SpendCheck
from broker.store.engine import create_store
from broker.store.migrate import upgrade
from broker.store.redis_spend import RedisSpendLedger
from broker.store.spend import SqlSpendLedger
from broker.store.sql import SqlApprovalStore

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
rules:
  - tool: transfer
    action: allow
    limits:
      - {sum: args.amount, max: 100, window: 1h}
      - {count: true, below: 3, window: 1d, align: calendar, per: session}
"""
NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlApprovalStore]:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    await upgrade(url)
    opened = create_store(url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_refusals_say_which_limit_what_is_left_and_when_it_frees(store: SqlApprovalStore) -> None:
    now = [NOON]
    check = SpendCheck(SqlSpendLedger(store), clock=lambda: now[0])
    decision = load_policy(POLICY, source="p.yaml").decide("transfer")

    async def spend(amount: float, session: str = "s1") -> Reservation | SpendBlocked | None:
        outcome = await check.reserve(
            decision, agent="a", session=session, tool="transfer", arguments={"amount": amount}
        )
        if isinstance(outcome, Reservation):
            async with check.settled(outcome):
                pass
        return outcome

    assert isinstance(await spend(60), Reservation)
    now[0] += 600
    over = await spend(41)
    assert isinstance(over, SpendBlocked)
    assert "would spend 41 with only 40 left of sum of args.amount <= 100 per 1h" in over.text
    # The 60 spent at noon leaves the sliding hour at 13:00.
    assert over.retry_at == NOON + 3600 and "2026-03-01T13:00:00Z" in over.text
    assert isinstance(await spend(40), Reservation)
    now[0] = NOON + 3601
    count = await spend(1)
    assert isinstance(count, SpendBlocked)
    assert "2 calls already spent, and the window must stay under its limit: count < 3 per 1d" in count.text
    assert count.retry_at == datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # midnight UTC
    assert isinstance(await spend(1, session="s2"), Reservation)


async def test_an_unreachable_ledger_refuses_the_call() -> None:
    decision = load_policy(POLICY, source="p.yaml").decide("transfer")
    async with RedisSpendLedger(f"redis://127.0.0.1:{closed_port()}/0", timeout=1) as ledger:
        check = SpendCheck(ledger)
        outcome = await check.reserve(
            decision, agent="a", session="s", tool="transfer", arguments={"amount": 1}
        )
        assert isinstance(outcome, SpendBlocked)
        assert "cannot count spend right now" in outcome.text and "fails closed" in outcome.text
        # Settling a reservation on a ledger that went away logs and does not raise: the call happened.
        async with check.settled(Reservation("r", (), NOON)):
            pass


async def test_a_decision_without_limits_costs_nothing() -> None:
    plain = load_policy('version: "1"\nrules: [{tool: x, action: allow}]\n', source="p.yaml").decide("x")
    async with RedisSpendLedger(f"redis://127.0.0.1:{closed_port()}/0", timeout=1) as ledger:
        assert await SpendCheck(ledger).reserve(plain, agent="a", session="s", tool="x", arguments={}) is None
