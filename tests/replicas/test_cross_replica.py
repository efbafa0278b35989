"""Three `broker serve` processes on one PostgreSQL database behave as one broker.

A decision taken on one replica reaches the agent held on another by notification (LISTEN/NOTIFY;
the sweepers run only every 30 s here, so an answer well inside that cannot come from them; the
100 ms target is measured by `bench/replicas.py`, not asserted here), racing decisions
on two replicas give one outcome and at most one upstream call, and a rate limit counts calls
on every replica together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest

from tests.replicas.cluster import (
    Agent,
    Cluster,
    ServerProcess,
    approval,
    monotonic_ms,
    pending_approvals,
    running_cluster,
    text_of,
    until_held,
)
from tests.replicas.conftest import fresh_database

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    timeout: 120
  - tool: list_open_orders
    action: allow
  - tool: get_balances
    action: allow
    rate_limit: {max: 5, window: 3600}
"""
SLOW_SWEEP = {"approvals": {"sweep_interval": 30, "hold_budget": 30}}


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with (
        fresh_database() as url,
        running_cluster(
            tmp_path_factory.mktemp("cross"), url, policy=POLICY, replicas=3, config=SLOW_SWEEP
        ) as cluster,
    ):
        yield cluster


def order(price: int) -> dict[str, Any]:
    # Distinct prices keep the calls distinct: an identical call would attach to the open approval.
    return {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": price}


async def released_after(cluster: Cluster, agent: Agent, alice: httpx2.AsyncClient, price: int) -> float:
    """Milliseconds from an approval committed on replica 0 to the agent held on replica 1 being answered."""
    deciding, holding = cluster.replicas[0], cluster.replicas[1]
    outcome: dict[str, Any] = {}

    async def held_call() -> None:
        outcome["result"] = await agent.call(holding, "place_order", order(price))
        outcome["at"] = monotonic_ms()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(held_call)
        await until_held(alice, holding)
        [pending] = await pending_approvals(alice, deciding)
        decided = await alice.post(f"{deciding.url}/api/approvals/{pending['id']}/approve")
        committed_at = monotonic_ms()
        assert decided.status_code == 200, decided.text
    result = outcome["result"]
    assert not result["isError"], text_of(result)
    assert result["structuredContent"]["price"] == price
    latency: float = outcome["at"] - committed_at
    return latency


async def test_a_decision_on_one_replica_releases_the_call_held_on_another_by_notification(
    cluster: Cluster,
) -> None:
    with anyio.fail_after(60, reason=cluster.logs()):
        async with cluster.agent_client() as agent, cluster.approver("alice") as alice:
            latencies = [await released_after(cluster, agent, alice, 91_000 + turn) for turn in range(5)]
    # A replica that missed the notification would answer at its next sweep, up to 30 s later: 3 s
    # is ten times under that, and far above what a loaded 2-core machine adds to a notification.
    assert max(latencies) < 3000, f"decision -> agent latencies (ms): {latencies}"


async def approve_and_deny_at_once(
    cluster: Cluster, agent: Agent, alice: httpx2.AsyncClient, bob: httpx2.AsyncClient, price: int
) -> tuple[str, dict[str, Any]]:
    """Alice approves on replica 0 while Bob denies on replica 1 the call held on replica 2.

    Returns the winning verb and what the agent received; checks the loser was told it lost."""
    approving, denying, holding = cluster.replicas
    results: dict[str, Any] = {}

    async def held_call() -> None:
        results["agent"] = await agent.call(holding, "place_order", order(price))

    async def decide(who: httpx2.AsyncClient, replica: ServerProcess, verb: str, approval_id: str) -> None:
        results[verb] = await who.post(f"{replica.url}/api/approvals/{approval_id}/{verb}")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(held_call)
        await until_held(alice, holding)
        [pending] = await pending_approvals(alice, holding)
        async with anyio.create_task_group() as race:
            race.start_soon(decide, alice, approving, "approve", pending["id"])
            race.start_soon(decide, bob, denying, "deny", pending["id"])
    codes = sorted((results["approve"].status_code, results["deny"].status_code))
    assert codes == [200, 409], (results["approve"].text, results["deny"].text)
    winner = "approve" if results["approve"].status_code == 200 else "deny"
    shown = await approval(alice, holding, pending["id"])
    events = [entry["event"] for entry in shown["audit"]]
    if winner == "approve":
        assert events == ["requested", "approved", "released", "completed", "delivered"]
    else:
        assert events == ["requested", "denied", "delivered"]
    return winner, results["agent"]


async def test_approve_and_deny_racing_on_two_replicas_give_one_outcome_and_one_upstream_call_at_most(
    cluster: Cluster,
) -> None:
    holding = cluster.replicas[2]
    with anyio.fail_after(60, reason=cluster.logs()):
        async with (
            cluster.agent_client() as agent,
            cluster.approver("alice") as alice,
            cluster.approver("bob") as bob,
        ):
            before = (await agent.call(holding, "list_open_orders", {}))["structuredContent"]["result"]
            outcomes = [
                await approve_and_deny_at_once(cluster, agent, alice, bob, 92_000 + turn) for turn in range(8)
            ]
            orders = (await agent.call(holding, "list_open_orders", {}))["structuredContent"]["result"]

    for winner, result in outcomes:
        if winner == "approve":
            assert not result["isError"], text_of(result)
        else:
            assert result["isError"] and text_of(result).startswith("Denied by a human: bob denied")
    placed = [result["structuredContent"]["order_id"] for winner, result in outcomes if winner == "approve"]
    # Each approved call reached the exchange exactly once; no denied one reached it.
    assert sorted(placed) == sorted(order["order_id"] for order in orders[len(before) :])


async def test_a_rate_limit_counts_the_calls_made_on_every_replica(cluster: Cluster) -> None:
    with anyio.fail_after(30, reason=cluster.logs()):
        async with cluster.agent_client() as agent:
            answers = [await agent.call(cluster.replicas[turn % 3], "get_balances", {}) for turn in range(12)]
    allowed = [answer for answer in answers if not answer["isError"]]
    refused = [answer for answer in answers if answer["isError"]]
    assert len(allowed) == 5, [text_of(answer) for answer in answers]
    assert all(text_of(answer).startswith("Rate limit exceeded") for answer in refused)
    assert {
        round(answer["_meta"]["io.github.mcp-approval-broker/decision"]["retryAfterSeconds"])
        for answer in refused
    } <= {
        3599,
        3600,
    }
