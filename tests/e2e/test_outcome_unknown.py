"""A call whose fate is unknown: sent to a real upstream process that dies before answering.

The broker runs in process with the demo server as its stdio upstream; the server is killed with
SIGKILL while it runs an approved call. The approval must end ``outcome_unknown`` (never
``failed``, never re-sent), and the agent, the API and the audit trail must say it may have run.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from broker.approvals import Approval, ApprovalStatus, NewApproval
from broker.approvals.service import ReleaseFailed
from broker.policy.holder import PolicyHolder
from broker.policy.loader import load_policy
from broker.proxy.releaser import UpstreamReleaser
from broker.proxy.upstream.pool import UpstreamPool
from broker.proxy.upstream.stdio import StdioConnection
from tests.e2e.harness import demo_test_server, make_settings, running_broker
from tests.upstream.support import demo_stdio

pytestmark = pytest.mark.anyio

POLICY = """
version: "1"
default: deny
rules:
  - tool: slow
    action: require_approval
    timeout: 60
  - tool: crash
    action: allow
  - tool: echo
    action: allow
"""


class StatusFeed:
    """Wakes the test whenever an approval changes, so it waits on events, not on time."""

    def __init__(self) -> None:
        self.seen: list[Approval] = []
        self._changed = anyio.Event()

    async def approval_opened(self, approval: Approval) -> None:
        self._note(approval)

    async def approval_updated(self, approval: Approval) -> None:
        self._note(approval)

    def _note(self, approval: Approval) -> None:
        self.seen.append(approval)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, status: ApprovalStatus) -> Approval:
        while True:
            for approval in self.seen:
                if approval.status is status:
                    return approval
            await self._changed.wait()


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_an_approved_call_whose_upstream_dies_mid_call_ends_outcome_unknown(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, demo_test_server())) as running:
        feed = StatusFeed()
        running.broker.approvals.add_listener(feed)
        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    arguments = {"seconds": 120, "steps": 120, "client_order_id": "ord-7f3a"}
                    outcome["result"] = await client.call_tool("slow", arguments)

                tasks.start_soon(agent)
                opened = await feed.until(ApprovalStatus.PENDING)
                async with running.approver("alice") as alice:
                    decided = await alice.post(f"/api/approvals/{opened.id}/approve")
                    assert decided.status_code == 200, decided.text
                # Claimed and handed to the upstream's stdin in one step of the releasing task.
                await feed.until(ApprovalStatus.RELEASED)
                upstream = cast(StdioConnection, running.broker.upstreams._connections["lab"])
                assert upstream.pid is not None
                os.kill(upstream.pid, signal.SIGKILL)

            result = outcome["result"]
            assert result.is_error
            text = text_of(result)
            assert text.startswith(
                "Outcome unknown: the approved call to 'slow' was sent to upstream 'lab' but no answer came "
                "back (server process exited with code -9"
            ), text
            assert "it may have run. It was not retried. Check on the upstream before doing it again" in text
            assert "client_order_id=ord-7f3a" in text

            async with running.approver("bob") as bob:
                shown = (await bob.get(f"/api/approvals/{opened.id}")).json()
                listed = (await bob.get("/api/approvals", params={"status": "outcome_unknown"})).json()
            assert shown["status"] == "outcome_unknown"
            assert [entry["event"] for entry in shown["audit"]] == [
                "requested",
                "approved",
                "released",
                "outcome_unknown",
                "delivered",
            ]
            assert "server process exited with code -9" in shown["audit"][3]["details"]["error"]
            assert shown["idempotency_ids"] == [{"path": "client_order_id", "value": "ord-7f3a"}]
            assert shown["guidance"] == (
                "Check upstream 'lab' for this call before retrying (look for client_order_id=ord-7f3a); "
                "it was not re-sent."
            )
            assert [item["id"] for item in listed["approvals"]] == [opened.id]
            assert (await running.broker.approvals.store.verify_audit_chain()).ok


async def test_an_allowed_call_cut_off_by_the_upstream_dying_says_it_may_have_run(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, demo_test_server())) as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                result = await client.call_tool("crash", {})
        assert result.is_error
        text = text_of(result)
        assert "broke after the call to 'crash' was sent and before it answered" in text
        assert "it may have run. It was not retried" in text


async def test_a_release_to_an_upstream_that_is_not_connected_fails_as_not_sent() -> None:
    pool = UpstreamPool({"demo": demo_stdio()}, environ=dict(os.environ))
    with anyio.fail_after(30):
        async with pool:
            await pool.wait_ready(20)
            assert pool.is_connected("demo")
    # The pool has stopped: the tools are still known, but there is no connection to send on.
    echo = pool.resolve("echo")
    assert echo is not None
    releaser = UpstreamReleaser(
        upstreams=pool,
        policy=PolicyHolder(load_policy(POLICY)),
        forward=lambda tool, arguments, caller=None: pool.call_tool(tool, arguments, caller=caller),
    )
    new = NewApproval(
        agent="trader",
        server="demo",
        tool="echo",
        upstream_tool="echo",
        arguments={"text": "hi"},
        policy_revision="r1",
        rule="r",
        rule_reason="",
        timeout=timedelta(seconds=60),
    )
    with pytest.raises(ReleaseFailed, match=r"not connected.*it was not sent"):
        await releaser.release(released(new))


def released(new: NewApproval) -> Approval:
    now = datetime.now(UTC)
    return Approval(
        id="a-1",
        status=ApprovalStatus.RELEASED,
        agent=new.agent,
        session_id=None,
        server=new.server,
        tool=new.tool,
        upstream_tool=new.upstream_tool,
        arguments=dict(new.arguments),
        arguments_hash=new.arguments_hash,
        request_key=new.request_key,
        policy_revision=new.policy_revision,
        rule=new.rule,
        rule_reason=new.rule_reason,
        approvers=(),
        channels=(),
        created_at=now,
        expires_at=now + new.timeout,
        version=1,
    )
