"""Approve with edits end to end with the official Python SDK client: an approver changes an
editable argument, the upstream runs the changed call, and the agent's result says so first; edits
the rule or the policy would not allow are refused with the field or rule; under a quorum the votes
given before an edit do not count, and a yes for arguments that changed meanwhile is refused; the
command line edits with --set; the pending answer and the re-call carry the change."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.e2e.harness import (
    APPROVER_TOKENS,
    FAST_APPROVALS,
    exchange_server,
    make_settings,
    running_broker,
)
from tests.e2e.test_approvals_cli import cli
from tests.e2e.test_approvals_flow import BIG_ORDER, text_of, watch
from tests.e2e.test_quorum_flow import feed_of

pytestmark = pytest.mark.anyio

EDIT_POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    id: absurd-price
    action: deny
    when: {"args.price": {"gt": 1000000}}
  - tool: place_order
    id: big-orders
    action: require_approval
    timeout: 60
    editable: [quantity, price]
    when: {"args.quantity": {"gte": 5}}
  - tool: place_order
    id: small-orders
    action: allow
"""
QUORUM_EDIT_POLICY = EDIT_POLICY.replace("    editable:", "    quorum: 2\n    editable:")
META = "io.github.mcp-approval-broker/approval"


async def post(
    who: httpx2.AsyncClient, approval_id: str, body: dict[str, Any] | None = None
) -> httpx2.Response:
    return await who.post(f"/api/approvals/{approval_id}/approve", json=body)


async def test_the_agent_reads_that_a_human_changed_the_arguments(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, EDIT_POLICY, exchange_server())) as running:
        opened = watch(running)
        with anyio.fail_after(40):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await opened.opened.receive()
                async with running.approver("alice") as alice:
                    response = await post(alice, approval.id, {"edits": {"quantity": 6}})
                    assert response.status_code == 200, response.text
                    body = response.json()
                    assert body["status"] == "approved" and body["decided_by"] == "alice"
                    assert body["arguments"]["quantity"] == 6
                    assert body["original_arguments"] == BIG_ORDER
                    assert body["changes"] == [{"field": "quantity", "from": 10, "to": 6}]
            result = outcome["result"]
            assert not result.is_error
            first = result.content[0].text
            assert first == (
                "A human (alice) changed the arguments before approving: quantity 10 -> 6. The upstream "
                "ran the call with the changed arguments; the result below is for those."
            )
            assert result.structured_content["quantity"] == 6
            edited = result.meta[META]["edited"]
            assert edited["by"] == "alice" and edited["originalArguments"] == BIG_ORDER
            assert edited["arguments"] == {**BIG_ORDER, "quantity": 6}
            async with running.approver("bob") as bob:
                shown = (await bob.get(f"/api/approvals/{approval.id}")).json()
                metrics = (await bob.get("/metrics")).text
            events = [entry["event"] for entry in shown["audit"]]
            assert events == [
                "requested",
                "edited",
                "voted",
                "approved",
                "released",
                "completed",
                "delivered",
            ]
            details = shown["audit"][1]["details"]
            assert details["from_sha256"] == approval.arguments_hash
            assert details["to_sha256"] == shown["arguments_sha256"] != approval.arguments_hash
            assert details["changes"] == [{"field": "quantity", "from": 10, "to": 6}]
            assert 'broker_approval_edits_total{outcome="applied"} 1.0' in metrics


async def test_edits_the_rule_or_the_policy_would_not_allow_are_refused(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, EDIT_POLICY, exchange_server())) as running:
        opened = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await opened.opened.receive()
                async with running.approver("alice") as alice:
                    refusals = {
                        "symbol": (
                            {"symbol": "ETHUSD"},
                            "'symbol' cannot be changed: the rule big-orders "
                            "lets approvers change only quantity, price",
                        ),
                        "allow": (
                            {"quantity": 1},
                            "the edited call would be decided by rule small-orders "
                            "(allow) instead of big-orders",
                        ),
                        "deny": ({"price": 2000000}, "the edited call would be denied by rule absurd-price"),
                        "type": ({"quantity": "lots"}, "'quantity': must be number, got string \"lots\""),
                    }
                    for edits, message in refusals.values():
                        response = await post(alice, approval.id, {"edits": edits})
                        assert response.status_code == 422, response.text
                        assert message in response.json()["detail"]
                    still = (await alice.get(f"/api/approvals/{approval.id}")).json()
                    assert still["status"] == "pending" and still["arguments"] == BIG_ORDER
                    assert "edited" not in [entry["event"] for entry in still["audit"]]
                    metrics = (await alice.get("/metrics")).text
                    assert 'broker_approval_edits_total{outcome="refused"} 4.0' in metrics
                api = ["--url", running.url, "--token", APPROVER_TOKENS["alice"]]
                code, out, err = await cli(
                    "approvals", "approve", approval.id, "--set", "price=85000.5", *api
                )
                assert code == 0, err
                assert out.splitlines() == [
                    f"{approval.id}: arguments changed: price 90000 -> 85000.5",
                    f"{approval.id}: approved by alice",
                ]
            assert outcome["result"].structured_content["price"] == 85000.5
            code, _, err = await cli("approvals", "approve", approval.id, "--set", "oops", *api)
            assert code == 2 and "--set takes NAME=VALUE" in err


async def test_under_a_quorum_votes_before_an_edit_do_not_count(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, QUORUM_EDIT_POLICY, exchange_server(), approvals=replace(FAST_APPROVALS, hold_budget=0.3)
    )
    async with running_broker(settings) as running:
        feed = feed_of(running)
        with anyio.fail_after(60):
            async with running.client() as client:
                pending = await client.call_tool("place_order", BIG_ORDER)
                assert text_of(pending).startswith("PENDING HUMAN APPROVAL")
                approval_id = pending.structured_content["approval_id"]
                original = BIG_ORDER
                async with running.approver("alice") as alice, running.approver("bob") as bob:
                    seen = (await alice.get(f"/api/approvals/{approval_id}")).json()["arguments_sha256"]
                    first = await post(alice, approval_id, {"arguments_sha256": seen})
                    assert first.json()["progress"] == "1 of 2 approvals: alice"
                    edited = await post(bob, approval_id, {"edits": {"quantity": 7}})
                    assert edited.status_code == 200, edited.text
                    # alice approved 10, not 7: her vote is gone, bob's yes is the first on 7.
                    assert edited.json()["status"] == "pending"
                    assert edited.json()["progress"] == "1 of 2 approvals: bob"
                    await feed.until_votes(1)
                    again = await client.call_tool("place_order", original)
                    assert (
                        "A human (bob) changed the arguments: quantity 10 -> 7. If the call is approved"
                        in (text_of(again))
                    )
                    stale = await post(alice, approval_id, {"arguments_sha256": seen})
                    assert stale.status_code == 409
                    assert (
                        "its arguments were changed by bob since you looked"
                        in stale.json()["detail"]["message"]
                    )
                    fresh = edited.json()["arguments_sha256"]
                    decided = await post(alice, approval_id, {"arguments_sha256": fresh})
                    assert decided.json()["status"] == "approved"
                    assert decided.json()["decided_by"] == "bob, alice"
                done = await client.call_tool("place_order", original)
                while text_of(done).startswith("APPROVED, RUNNING"):
                    done = await client.call_tool("place_order", original)
                assert not done.is_error and done.structured_content["quantity"] == 7
                assert text_of(done).startswith(
                    "A human (bob) changed the arguments before approving: quantity 10 -> 7."
                )


async def test_an_editable_argument_the_tool_does_not_have(tmp_path: Path) -> None:
    """`policy check --servers` refuses it with the rule's position; a running broker logs the same
    and refuses the edit, naming the tool's arguments."""
    policy = EDIT_POLICY.replace("editable: [quantity, price]", "editable: [quantity, colour]")
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": exchange_server()}))
    (tmp_path / "bad.yaml").write_text(policy)
    code, _, err = await cli("policy", "check", str(tmp_path / "bad.yaml"), "--servers", str(servers))
    assert code == 2
    assert (
        f"{tmp_path / 'bad.yaml'}:9: rule big-orders: editable 'colour' is not an argument of tool "
        "'place_order' on upstream 'exchange' (its arguments: price, quantity, side, symbol)"
    ) in err
    (tmp_path / "good.yaml").write_text(EDIT_POLICY)
    code, out, err = await cli("policy", "check", str(tmp_path / "good.yaml"), "--servers", str(servers))
    assert code == 0 and ": ok (revision" in out, err
    code, out, _ = await cli(
        "policy", "explain", str(tmp_path / "good.yaml"), "place_order", "--args", json.dumps(BIG_ORDER)
    )
    assert "editable:  approvers may change quantity, price before approving" in out

    async with running_broker(make_settings(tmp_path, policy, exchange_server())) as running:
        opened = watch(running)
        with anyio.fail_after(40):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "place_order", BIG_ORDER)
                approval = await opened.opened.receive()
                async with running.approver("alice") as alice:
                    response = await post(alice, approval.id, {"edits": {"colour": "red"}})
                    assert response.status_code == 422
                    assert (
                        "'colour' is not an argument of the tool 'place_order' (its arguments: price, quantity, side, symbol)"
                        in response.json()["detail"]
                    )
                    await alice.post(f"/api/approvals/{approval.id}/deny")
