"""Time-boxed grants end to end with the official Python SDK client and a real broker: a grant
made with the approval lets the next matching call through without a prompt (and says so in the
decision log and metrics) until it is revoked, runs out, expires (injected clock) or the policy
changes; it never lets through what the policy denies or hides, nor a call over the rate limit."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.client import Client

from broker.approvals.clock import utc_now
from broker.approvals.grants import Grant
from broker.approvals.health import StoreHealth
from broker.approvals.model import ApprovalStatus
from broker.policy.decision import Decision
from broker.proxy.checks.grants import GrantCheck
from tests.e2e.harness import (
    APPROVER_TOKENS,
    FAST_APPROVALS,
    RunningBroker,
    exchange_server,
    make_settings,
    running_broker,
)
from tests.e2e.test_approvals_cli import cli
from tests.e2e.test_approvals_flow import ApprovalFeed, text_of, watch
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

GRANT_POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    timeout: 60
    rate_limit: {max: 4, window: 3600}
    grant: {max: 1h, max_calls: 10, scope: [identical, matching]}
  - tool: place_order
    when: {"args.quantity": {"gt": 1000}}
    action: deny
    reason: "never more than 1000 units"
  - tool: binance_us_cust_cancel_order
    action: require_approval
    timeout: 60
"""


def order(quantity: int) -> dict[str, Any]:
    return {"symbol": "BTCUSD", "side": "buy", "quantity": quantity, "price": 90000}


class Lines:
    """The decision log as a list of parsed lines."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, line: bytes) -> None:
        self.lines.append(json.loads(line))

    def flush(self) -> None:
        pass


async def approve(
    running: RunningBroker, approval_id: str, grant: dict[str, Any] | None = None, who: str = "alice"
) -> httpx2.Response:
    async with running.approver(who) as http:
        return await http.post(
            f"/api/approvals/{approval_id}/approve", json={"grant": grant} if grant else {}
        )


async def held_then_approved(
    running: RunningBroker,
    client: Client,
    feed: ApprovalFeed,
    arguments: dict[str, Any],
    grant: dict[str, Any],
) -> dict[str, Any]:
    """Calls, waits for the hold, approves with `grant`; returns the approval's API answer."""
    async with anyio.create_task_group() as tasks:
        outcome: dict[str, Any] = {}

        async def agent() -> None:
            outcome["result"] = await client.call_tool("place_order", arguments)

        tasks.start_soon(agent)
        approval = await feed.opened.receive()
        response = await approve(running, approval.id, grant)
        assert response.status_code == 200, response.text
    assert not outcome["result"].is_error, text_of(outcome["result"])
    body: dict[str, Any] = response.json()
    return body


async def is_held(
    running: RunningBroker, client: Client, feed: ApprovalFeed, arguments: dict[str, Any]
) -> bool:
    """Calls and denies the approval if one opens; True when the call was held (and then denied)."""
    async with anyio.create_task_group() as tasks:
        outcome: dict[str, Any] = {}

        async def agent() -> None:
            outcome["result"] = await client.call_tool("place_order", arguments)
            tasks.cancel_scope.cancel()

        tasks.start_soon(agent)
        approval = await feed.opened.receive()
        async with running.approver("bob") as bob:
            denied = await bob.post(f"/api/approvals/{approval.id}/deny", json={"reason": "not now"})
            assert denied.status_code == 200, denied.text
        await anyio.sleep_forever()
    return "denied" in text_of(outcome["result"])


async def passes(client: Client, arguments: dict[str, Any]) -> bool:
    """True when the call ran upstream without a human (a held one would block this past the timeout)."""
    with anyio.fail_after(10):
        result = await client.call_tool("place_order", arguments)
    return not result.is_error and result.structured_content is not None


async def test_a_matching_grant_lets_the_next_calls_through_until_revoked(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        lines = Lines()
        running.broker.decisions.sink = lines
        with anyio.fail_after(60):
            async with running.client() as client:
                approved = await held_then_approved(
                    running, client, feed, order(10), {"minutes": 30, "scope": "matching", "max_calls": 10}
                )
                grant = approved["grant"]
                assert grant["summary"] == "grant for 30 min (10 calls, matching)"
                assert (grant["created_by"], grant["used_calls"], grant["state"]) == (["alice"], 0, "active")

                # Other arguments the same rule holds: through, no approval opened.
                assert await passes(client, order(20))
                granted = [line for line in lines.lines if line.get("outcome") == "granted"]
                assert [line["grant"] for line in granted] == [grant["id"]]
                # Denied by the policy: the grant does not reach it.
                denied = await client.call_tool("place_order", order(5000))
                assert denied.is_error and "denied by policy" in text_of(denied)

                api = ["--url", running.url, "--token", APPROVER_TOKENS["bob"]]
                code, out, err = await cli("grants", "list", "--active", *api)
                assert code == 0, err
                assert grant["id"] in out and "1/10" in out and "matching" in out
                code, out, err = await cli("grants", "revoke", grant["id"], *api)
                assert code == 0, err
                assert f"{grant['id']}: revoked after 1 of 10 calls" in out

                assert await is_held(running, client, feed, order(20))
            assert feed.opened.statistics().current_buffer_used == 0
            async with running.approver("bob") as bob:
                listed = (await bob.get("/api/grants")).json()["grants"]
                metrics = (await bob.get("/metrics")).text
                trail = (await bob.get(f"/api/approvals/{approved['id']}")).json()["audit"]
            assert [(g["state"], g["revoked_by"]) for g in listed] == [("revoked", "bob")]
            assert 'broker_grants_total{event="created"} 1.0' in metrics
            assert 'broker_grants_total{event="used"} 1.0' in metrics
            assert 'broker_grants_total{event="revoked"} 1.0' in metrics
            assert 'broker_tool_calls_total{action="granted"} 1.0' in metrics
            events = [entry["event"] for entry in trail]
            assert events[:4] == ["requested", "voted", "approved", "granted"]
            assert events[-1] == "grant_revoked"


async def test_an_identical_grant_holds_other_arguments_and_runs_out(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(client.call_tool, "place_order", order(10))
                    approval = await feed.opened.receive()
                    api = ["--url", running.url, "--token", APPROVER_TOKENS["alice"]]
                    code, out, err = await cli(
                        "approvals", "approve", approval.id, "--grant", "5m", "--grant-calls", "1", *api
                    )
                    assert code == 0, err
                    summary = f"{approval.id}: approved by alice + grant for 5 min (1 call, identical): g-{approval.id}"
                    assert out.strip() == summary
                assert await is_held(running, client, feed, order(11))
                assert await passes(client, order(10))
                # The rate limit (4 an hour) was not reached: the grant's one call is spent.
                assert await is_held(running, client, feed, order(10))


async def test_a_grant_ends_when_it_expires_and_when_the_policy_changes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, GRANT_POLICY.replace("max: 4", "max: 40"), exchange_server())
    async with running_broker(settings) as running:
        feed = watch(running)
        clock = ManualClock(utc_now())
        running.broker.gateway.attach_grants(GrantCheck(running.broker.grants.store, clock=clock))
        with anyio.fail_after(60):
            async with running.client() as client:
                approved = await held_then_approved(
                    running, client, feed, order(10), {"minutes": 10, "scope": "matching"}
                )
                # From the grant's own end: it was made on the broker's clock, seconds after this
                # clock started on a busy machine.
                expires_at = datetime.fromisoformat(approved["grant"]["expires_at"])
                clock.now = expires_at - timedelta(minutes=1)
                assert await passes(client, order(12))
                clock.now = expires_at + timedelta(seconds=1)
                assert await is_held(running, client, feed, order(12))

                await held_then_approved(
                    running, client, feed, order(10), {"minutes": 60, "scope": "matching"}
                )
                assert await passes(client, order(13))
                settings.policy_path.write_text(GRANT_POLICY.replace("max: 4", "max: 41"))
                assert running.broker.policy_file.reload().changed
                assert await is_held(running, client, feed, order(13))


async def test_a_grant_never_overrides_a_rate_limit_or_a_hide(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client:
                await held_then_approved(
                    running, client, feed, order(10), {"minutes": 30, "scope": "matching"}
                )
                assert await passes(client, order(11))
                assert await passes(client, order(12))
                assert await passes(client, order(13))  # the fourth call this hour
                limited = await client.call_tool("place_order", order(14))
                assert limited.is_error and "Rate limit exceeded" in text_of(limited)
                [grant] = await running.broker.grants.list()
                assert grant.used_calls == 3  # the refused call spent nothing

                hidden = GRANT_POLICY.replace("rules:", 'hide: ["place_order"]\nrules:')
                running.broker.settings.policy_path.write_text(hidden)
                assert running.broker.policy_file.reload().changed
                refused = await client.call_tool("place_order", order(11))
                assert refused.is_error and "place_order" in text_of(refused)
                assert (await running.broker.grants.list())[0].used_calls == 3


async def test_grants_beyond_the_rule_or_without_one_are_refused(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "place_order", order(10))
                approval = await feed.opened.receive()
                too_long = await approve(running, approval.id, {"minutes": 61})
                assert too_long.status_code == 403
                assert "allows at most 60" in too_long.json()["detail"]
                too_many = await approve(running, approval.id, {"minutes": 5, "max_calls": 11})
                assert too_many.status_code == 403 and "at most 10" in too_many.json()["detail"]
                bad = await approve(running, approval.id, {"minutes": -1})
                assert bad.status_code == 422
                async with running.approver("bob") as bob:
                    on_deny = await bob.post(
                        f"/api/approvals/{approval.id}/deny", json={"grant": {"minutes": 5}}
                    )
                    assert on_deny.status_code == 422
                assert (await approve(running, approval.id)).status_code == 200

                tasks.start_soon(client.call_tool, "binance_us_cust_cancel_order", {"order_id": "o-1"})
                cancel = await feed.opened.receive()
                no_grant = await approve(running, cancel.id, {"minutes": 5})
                assert no_grant.status_code == 403 and "allows no grants" in no_grant.json()["detail"]
                assert (await approve(running, cancel.id)).status_code == 200
            assert await running.broker.grants.list() == []


async def test_an_agent_back_for_its_held_call_gets_that_outcome_not_a_granted_second_run(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path, GRANT_POLICY, exchange_server(), approvals=replace(FAST_APPROVALS, hold_budget=0.3)
    )
    async with running_broker(settings) as running:
        feed = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client:
                pending = await client.call_tool("place_order", order(10))
                assert "pending" in text_of(pending).lower(), text_of(pending)
                approval = await feed.opened.receive()
                response = await approve(running, approval.id, {"minutes": 30, "max_calls": 5})
                assert response.status_code == 200, response.text
                finished = await running.broker.approvals.wait(approval.id, 20)
                assert finished.status.value == "completed"

                back = await client.call_tool("place_order", order(10))
                assert not back.is_error and back.structured_content == finished.result["structuredContent"]
                [grant] = await running.broker.grants.list()
                assert grant.used_calls == 0  # the outcome came from the approval, nothing ran again
                assert await passes(client, order(10))  # a new identical call uses the grant
                assert (await running.broker.grants.list())[0].used_calls == 1


async def call_as_task(client: Client, arguments: dict[str, Any]) -> types.CreateTaskResult:
    """tools/call with params.task over the SDK client's session. The SDK (2.3) validates every
    tools/call answer as a CallToolResult, so the CreateTaskResult is read from its raw send."""
    params = types.CallToolRequestParams(
        name="place_order", arguments=arguments, task=types.TaskMetadata(ttl=60000)
    ).model_dump(by_alias=True, mode="json", exclude_none=True)
    raw = await client.session._dispatcher.send_raw_request("tools/call", params, {})
    return types.CreateTaskResult.model_validate(raw, by_name=False)


async def test_a_task_call_under_a_grant_runs_at_once_and_its_task_gives_the_result(tmp_path: Path) -> None:
    """The Python SDK client asks for a task: it still gets one, but nobody is asked; the task runs
    the forwarded call at once, and tasks/get and tasks/result give the upstream's answer."""
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        lines = Lines()
        running.broker.decisions.sink = lines
        with anyio.fail_after(60):
            async with running.client() as client:
                approved = await held_then_approved(
                    running, client, feed, order(10), {"minutes": 30, "scope": "matching", "max_calls": 10}
                )
                created = await call_as_task(client, order(20))
                task_id = created.task.task_id
                result = await client.session.send_request(
                    types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id)),
                    types.CallToolResult,
                )
                assert not result.is_error, result
                assert result.structured_content is not None and result.structured_content["quantity"] == 20
                status = await client.session.send_request(
                    types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)),
                    types.GetTaskResult,
                )
                assert status.status == "completed"
            assert feed.opened.statistics().current_buffer_used == 0  # nobody was asked
            [grant] = await running.broker.grants.list()
            assert (grant.id, grant.used_calls) == (approved["grant"]["id"], 1)
            granted = [line for line in lines.lines if line.get("outcome") == "granted"]
            assert [line["grant"] for line in granted] == [grant.id]
            ran = await running.broker.approvals.store.get_by_task(task_id)
            assert ran is not None and (ran.decided_via, ran.decided_by) == ("grant", f"grant {grant.id}")
            store = running.broker.approvals.store
            assert await store.list(statuses={ApprovalStatus.PENDING}) == []
            trail = await store.audit_trail(ran.id)
            assert [(record.event, record.at) for record in trail[:2]] == [
                ("requested", ran.created_at),
                ("approved", ran.created_at),  # one transaction: it was never pending
            ]
            assert (await store.verify_audit_chain()).ok


class StoreFailsDuringUse(GrantCheck):
    """A grant check during whose store round trip another part of the broker sees the store fail."""

    def __init__(self, inner: GrantCheck, health: StoreHealth) -> None:
        self._inner = inner
        self._health = health

    def applies(self, decision: Decision) -> bool:
        return self._inner.applies(decision)

    async def use(self, *args: Any) -> Grant | None:
        grant = await self._inner.use(*args)
        self._health.failed("seen failing while the grant was spent")
        return grant


async def test_a_grant_spent_while_the_store_was_seen_failing_is_forwarded_only_after_a_probe(
    tmp_path: Path,
) -> None:
    """The store answered the grant's use but was seen failing meanwhile: the call spent one of the
    grant's calls, so it goes through once a probe shows the store back (it used to be refused with
    its call spent)."""
    async with running_broker(make_settings(tmp_path, GRANT_POLICY, exchange_server())) as running:
        feed = watch(running)
        health = running.broker.store_health
        with anyio.fail_after(60):
            async with running.client() as client:
                await held_then_approved(
                    running, client, feed, order(10), {"minutes": 30, "scope": "matching"}
                )
                gateway = running.broker.gateway
                gateway.attach_grants(StoreFailsDuringUse(GrantCheck(running.broker.grants.store), health))
                assert await passes(client, order(20))
                assert health.up
                assert (await running.broker.grants.list())[0].used_calls == 1
