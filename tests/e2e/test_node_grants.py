"""The TypeScript SDK client under a time-boxed grant: approved with a matching grant, its next
call with other arguments runs without a prompt; once the grant is revoked the same call is held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from tests.e2e.harness import AGENT_KEYS, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import watch
from tests.e2e.test_grants_flow import GRANT_POLICY, approve, order
from tests.e2e.test_node_peers import Step, pytestmark, run_node_client, text_of

__all__ = ["pytestmark"]


def call(quantity: int, timeout_ms: int = 20000) -> Step:
    return {"op": "call_tool", "name": "place_order", "arguments": order(quantity), "timeoutMs": timeout_ms}


async def test_a_typescript_client_runs_under_a_grant_until_it_is_revoked(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        url = f"{running.url}/mcp"
        outcome: dict[str, list[dict[str, Any]]] = {}

        async def client(name: str, steps: list[Step]) -> None:
            outcome[name] = await run_node_client(url, steps, api_key=AGENT_KEYS["trader"])

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tasks:
                # The second call gets 5 s: held, it would time out in the client and fail the test.
                tasks.start_soon(client, "granted", [call(10), call(20, timeout_ms=5000)])
                approval = await feed.opened.receive()
                approved = await approve(
                    running, approval.id, {"minutes": 30, "scope": "matching", "max_calls": 5}
                )
                assert approved.status_code == 200, approved.text
            first, second = outcome["granted"]
            assert first["ok"] and second["ok"], (first, second)
            assert second["result"]["structuredContent"]["quantity"] == 20
            assert feed.opened.statistics().current_buffer_used == 0  # no second approval was opened

            grant = approved.json()["grant"]
            async with running.approver("bob") as bob:
                revoked = await bob.post(f"/api/grants/{grant['id']}/revoke")
                assert revoked.status_code == 200 and revoked.json()["used_calls"] == 1

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(client, "revoked", [call(20)])
                    held = await feed.opened.receive()
                    assert held.arguments["quantity"] == 20
                    denied = await bob.post(
                        f"/api/approvals/{held.id}/deny", json={"reason": "grant revoked"}
                    )
                    assert denied.status_code == 200
        [after] = outcome["revoked"]
        assert after["ok"] and after["result"]["isError"], after
        assert "denied" in text_of(after["result"])


async def test_a_typescript_task_call_under_a_grant_runs_at_once_as_a_task(tmp_path: Path) -> None:
    """The SDK asks for a task under a grant: it gets one, nobody is asked, and the task's result
    is the upstream's answer."""
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        url = f"{running.url}/mcp"
        outcome: dict[str, list[dict[str, Any]]] = {}

        async def client(name: str, steps: list[Step]) -> None:
            outcome[name] = await run_node_client(url, steps, api_key=AGENT_KEYS["trader"])

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client, "approved", [call(10)])
                approval = await feed.opened.receive()
                approved = await approve(running, approval.id, {"minutes": 30, "scope": "matching"})
                assert approved.status_code == 200, approved.text
            as_task: Step = {"op": "call_tool_as_task", "name": "place_order", "arguments": order(20)}
            created, fetched, status = await run_node_client(
                url,
                [as_task, {"op": "task_result", "timeoutMs": 5000}, {"op": "get_task"}],
                api_key=AGENT_KEYS["trader"],
            )
        assert created["ok"] and fetched["ok"] and status["ok"], (created, fetched, status)
        assert fetched["result"]["structuredContent"]["quantity"] == 20, text_of(fetched["result"])
        assert status["result"]["status"] == "completed"
        assert feed.opened.statistics().current_buffer_used == 0  # nobody was asked
        assert (await running.broker.grants.list())[0].used_calls == 1
