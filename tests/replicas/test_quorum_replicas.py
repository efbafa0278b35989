"""Four-eyes approval across `broker serve` processes on one PostgreSQL database: 100 simultaneous
votes from 5 approvers on replicas A and B release the quorum-2 call held on replica C exactly once,
with exactly two distinct approvers recorded, every round."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest

from tests.replicas.cluster import Cluster, approval, pending_approvals, running_cluster, text_of, until_held
from tests.replicas.conftest import fresh_database

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    timeout: 120
    approvers: ["@desk"]
    quorum: 2
"""
TOKENS = {f"approver-{n}": f"tok-quorum-{n}-0000" for n in range(5)}
CONFIG = {
    "approvals": {"sweep_interval": 30, "hold_budget": 60},
    "approvers": {name: {"token": token, "groups": ["desk"]} for name, token in TOKENS.items()},
}
ROUNDS = 3


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with (
        fresh_database() as url,
        running_cluster(
            tmp_path_factory.mktemp("quorum"), url, policy=POLICY, replicas=3, config=CONFIG
        ) as cluster,
    ):
        yield cluster


def person(name: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKENS[name]}"}, timeout=60)


async def hundred_votes(cluster: Cluster, people: list[httpx2.AsyncClient], approval_id: str) -> list[int]:
    codes: list[int] = []

    async def vote(n: int) -> None:
        replica = cluster.replicas[n % 2]
        response = await people[n % 5].post(f"{replica.url}/api/approvals/{approval_id}/approve")
        codes.append(response.status_code)

    async with anyio.create_task_group() as tasks:
        for n in range(100):
            tasks.start_soon(vote, n)
    return codes


async def test_hundred_votes_on_two_replicas_release_the_call_held_on_a_third_once(cluster: Cluster) -> None:
    holding = cluster.replicas[2]
    with anyio.fail_after(120, reason=cluster.logs()):
        async with cluster.agent_client() as agent:
            people = [person(name) for name in TOKENS]
            try:
                for round_ in range(ROUNDS):
                    outcome: dict[str, Any] = {}

                    async def held_call(outcome: dict[str, Any], price: int) -> None:
                        order = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": price}
                        outcome["result"] = await agent.call(holding, "place_order", order)

                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(held_call, outcome, 70_000 + round_)
                        await until_held(people[0], holding)
                        [pending] = await pending_approvals(people[0], holding)
                        codes = await hundred_votes(cluster, people, pending["id"])
                    assert set(codes) <= {200, 409} and len(codes) == 100, codes
                    result = outcome["result"]
                    assert not result["isError"], text_of(result)
                    shown = await approval(people[0], holding, pending["id"])
                    approvers = shown["decided_by"].split(", ")
                    assert len(approvers) == len(set(approvers)) == 2, shown["decided_by"]
                    assert sorted(vote["approver"] for vote in shown["votes"]) == sorted(approvers)
                    events = [entry["event"] for entry in shown["audit"]]
                    assert events.count("approved") == events.count("released") == 1, events
                    assert events.count("completed") == 1, events
            finally:
                for client in people:
                    await client.aclose()
