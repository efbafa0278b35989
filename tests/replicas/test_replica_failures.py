"""A replica that dies (kill -9) or is stopped (SIGTERM) while agents wait on it loses no approval.

Killed: its agents lose their connection, the approvals stay in the shared store, and the
agents get their results from another replica, by repeating the identical call or, for MCP
tasks, with tasks/get and tasks/result. Stopped: it drains, so its held agents still receive
decisions during the grace period and then a "pending approval" answer to come back with.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest

from broker.proxy.held_answers import APPROVAL_META_KEY
from tests.replicas.cluster import (
    Cluster,
    ServerProcess,
    Session,
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
    timeout: 300
  - tool: list_open_orders
    action: allow
"""
GRACE = 2.0


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    config = {"approvals": {"sweep_interval": 0.5, "hold_budget": 30}}
    async with (
        fresh_database() as url,
        running_cluster(
            tmp_path_factory.mktemp("failures"), url, policy=POLICY, replicas=2, config=config
        ) as cluster,
    ):
        # One more, stopped gracefully by the drain test.
        await cluster.start_replica(shutdown_grace_seconds=GRACE)
        yield cluster


def order(price: int) -> dict[str, Any]:
    return {"symbol": "ETHUSD", "side": "sell", "quantity": 7, "price": price}


def by_price(approvals: list[dict[str, Any]]) -> dict[int, str]:
    return {int(item["arguments"]["price"]): item["id"] for item in approvals}


async def test_agents_of_a_killed_replica_get_their_results_from_another(cluster: Cluster) -> None:
    victim, survivor = cluster.replicas[0], cluster.replicas[1]
    lost: list[BaseException] = []
    with anyio.fail_after(60, reason=cluster.logs()):
        async with (
            cluster.agent_client() as agent,
            cluster.approver("alice") as alice,
            httpx2.AsyncClient(timeout=30) as http,
        ):
            on_victim = await Session.open(http, victim, cluster.agent_key)
            created = await on_victim.request(
                "tools/call", {"name": "place_order", "arguments": order(3_001), "task": {"ttl": 600_000}}
            )
            task_id = created["result"]["task"]["taskId"]

            async def held_call() -> None:
                try:
                    await agent.call(victim, "place_order", order(3_000))
                except httpx2.TransportError as exc:
                    lost.append(exc)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(held_call)
                await until_held(alice, victim)
                await victim.kill()
            assert victim.process.returncode == -signal.SIGKILL
            assert len(lost) == 1, "the held agent's connection ended with its replica"

            kept = by_price(await pending_approvals(alice, survivor))
            assert set(kept) == {3_000, 3_001}

            # The agent repeats its call on another replica: it attaches to the same approval.
            outcome: dict[str, Any] = {}

            async def repeat() -> None:
                outcome["result"] = await agent.call(survivor, "place_order", order(3_000))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(repeat)
                await until_held(alice, survivor)
                assert by_price(await pending_approvals(alice, survivor)) == kept, "no second approval"
                decided = await alice.post(f"{survivor.url}/api/approvals/{kept[3_000]}/approve")
                assert decided.status_code == 200, decided.text
            result = outcome["result"]
            assert not result["isError"], text_of(result)
            assert result["_meta"][APPROVAL_META_KEY]["approvalId"] == kept[3_000]

            # The task made on the dead replica is answered by the survivor from the store.
            on_survivor = await Session.open(http, survivor, cluster.agent_key)
            task = (await on_survivor.request("tasks/get", {"taskId": task_id}))["result"]
            assert task["status"] == "working"
            decided = await alice.post(f"{survivor.url}/api/approvals/{kept[3_001]}/approve")
            assert decided.status_code == 200, decided.text
            task_result = (await on_survivor.request("tasks/result", {"taskId": task_id}))["result"]
            assert not task_result["isError"], text_of(task_result)
            assert task_result["structuredContent"]["price"] == 3_001

            shown = await approval(alice, survivor, kept[3_000])
            assert [entry["event"] for entry in shown["audit"]] == [
                "requested",
                "approved",
                "released",
                "completed",
                "delivered",
            ]


async def test_a_stopped_replica_drains_its_held_calls_and_drops_no_approval(cluster: Cluster) -> None:
    draining, survivor = cluster.replicas[2], cluster.replicas[1]
    answers: dict[int, tuple[dict[str, Any], float]] = {}
    with anyio.fail_after(60, reason=cluster.logs()):
        async with cluster.agent_client() as agent, cluster.approver("alice") as alice:

            async def held_call(price: int) -> None:
                result = await agent.call(draining, "place_order", order(price))
                answers[price] = (result, monotonic_ms())

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(held_call, 4_000)
                tasks.start_soon(held_call, 4_001)
                await until_held(alice, draining, 2)
                held = by_price(await pending_approvals(alice, survivor))
                draining.process.send_signal(signal.SIGTERM)
                signalled_at = monotonic_ms()
                await until_not_ready(alice, draining)
                # A decision made during the grace still reaches the agent held on the stopping replica.
                decided = await alice.post(f"{survivor.url}/api/approvals/{held[4_001]}/approve")
                assert decided.status_code == 200, decided.text
            with anyio.fail_after(15):
                status = await draining.process.wait()

        assert status in (0, -signal.SIGTERM), draining.log()
        assert "draining: 2 held agent requests" in draining.log()
        decided_result, _ = answers[4_001]
        assert not decided_result["isError"], text_of(decided_result)
        assert decided_result["structuredContent"]["price"] == 4_001

        pending_result, answered_at = answers[4_000]
        assert pending_result["isError"]
        assert text_of(pending_result).startswith("PENDING HUMAN APPROVAL"), text_of(pending_result)
        assert pending_result["_meta"][APPROVAL_META_KEY]["approvalId"] == held[4_000]
        assert GRACE * 1000 - 100 <= answered_at - signalled_at <= GRACE * 1000 + 3000

        async with cluster.agent_client() as agent, cluster.approver("alice") as alice:
            assert held[4_000] in by_price(await pending_approvals(alice, survivor)).values()
            outcome: dict[str, Any] = {}

            async def come_back() -> None:
                outcome["result"] = await agent.call(survivor, "place_order", order(4_000))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(come_back)
                await until_held(alice, survivor)
                decided = await alice.post(f"{survivor.url}/api/approvals/{held[4_000]}/approve")
                assert decided.status_code == 200, decided.text
        assert not outcome["result"]["isError"], text_of(outcome["result"])
        assert outcome["result"]["_meta"][APPROVAL_META_KEY]["approvalId"] == held[4_000]


async def until_not_ready(http: httpx2.AsyncClient, replica: ServerProcess) -> None:
    """Returns once the replica answers /readyz with 503 or stopped listening: the drain has begun."""
    with anyio.fail_after(10, reason=f"{replica.name} stayed ready after SIGTERM:\n{replica.log()}"):
        while True:
            try:
                if (await http.get(f"{replica.url}/readyz")).status_code == 503:
                    return
            except httpx2.TransportError:
                return
            await anyio.sleep(0.02)
