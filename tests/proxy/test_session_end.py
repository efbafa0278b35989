"""Ending a session (HTTP DELETE) while a call is held, when the client's cancellation of that call
arrives after the DELETE: a client that timed out sends "Request timed out" and then DELETE, and
the two race to the broker. Driven over the real /mcp endpoint, in the order that used to lose."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.approvals import ApprovalStatus
from broker.proxy.agent_request import AgentRequest
from broker.proxy.sessions import SessionRegistry
from tests.e2e.harness import FAST_APPROVALS, RawSession, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, POLICY, watch

pytestmark = pytest.mark.anyio

TIMED_OUT = "McpError: MCP error -32001: Request timed out"


def cancelled(request_id: int, reason: str) -> dict[str, Any]:
    params = {"requestId": request_id, "reason": reason}
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}


async def held_then_deleted_then_cancelled(tmp_path: Path, reason: str) -> tuple[ApprovalStatus, int, Any]:
    """The approval's status once the held request answered, the cancellation's HTTP status, and
    the held request's answer."""
    # A grace far longer than the test: the late cancellation must count however slow the box is.
    approvals = replace(FAST_APPROVALS, session_end_grace=3600)
    async with running_broker(
        make_settings(tmp_path, POLICY, exchange_server(), approvals=approvals)
    ) as running:
        feed = watch(running)
        answer: dict[str, Any] = {}
        with anyio.fail_after(30):
            async with running.raw() as http, anyio.create_task_group() as tasks:
                raw = RawSession(http)
                await raw.open()

                async def held() -> None:
                    answer.update(
                        await raw.rpc(2, "tools/call", {"name": "place_order", "arguments": BIG_ORDER})
                    )

                tasks.start_soon(held)
                approval = await feed.opened.receive()
                assert (await http.delete("/mcp", headers=raw.headers)).status_code == 200
                late = await http.post("/mcp", json=cancelled(2, reason), headers=raw.headers)
            stored = await running.broker.approvals.store.get(approval.id)
            assert stored is not None
    return stored.status, late.status_code, answer


async def test_a_timed_out_cancel_overtaken_by_the_session_end_leaves_the_approval_pending(
    tmp_path: Path,
) -> None:
    status, late, answer = await held_then_deleted_then_cancelled(tmp_path, TIMED_OUT)
    assert status is ApprovalStatus.PENDING
    assert late == 202
    assert answer["error"]["code"] == -32800  # the request itself was cancelled


async def test_an_explicit_cancel_overtaken_by_the_session_end_withdraws_without_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    status, late, _ = await held_then_deleted_then_cancelled(tmp_path, "user pressed stop")
    assert status is ApprovalStatus.CANCELLED
    assert late == 202


# -- the registry's side, without a broker ------------------------------------------------------


async def _no_notify(method: str, params: dict[str, Any]) -> None:
    return None


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def with_request_in_flight(registry: SessionRegistry, agent: str = "trader") -> tuple[str, AgentRequest]:
    session = registry.open(agent, "2025-11-25")
    assert session is not None
    request = AgentRequest(_no_notify)
    session.in_flight[7] = (anyio.CancelScope(), request)
    return session.id, request


async def settled(request: AgentRequest) -> bool:
    with anyio.fail_after(10):
        return await request.withdrawal()


async def test_a_late_timed_out_cancel_turns_the_session_end_into_stopped_waiting() -> None:
    registry = SessionRegistry(end_grace=3600)
    session_id, request = with_request_in_flight(registry)
    registry.end(session_id)
    assert registry.cancel_after_end(session_id, "trader", 7, timed_out=True)
    assert await settled(request) is False
    # Only once: the tombstone is gone with its last request.
    assert not registry.cancel_after_end(session_id, "trader", 7, timed_out=False)


@pytest.mark.parametrize(
    ("how", "withdrawn"),
    [
        ("the grace runs out", True),
        # Shutdown cuts the grace short: no cancellation can arrive any more.
        ("the broker shuts down during the grace", True),
        ("the broker closes the session", False),
    ],
)
async def test_without_a_cancellation_only_the_agent_ending_its_session_withdraws(
    how: str, withdrawn: bool
) -> None:
    registry = SessionRegistry(end_grace=0.05 if how == "the grace runs out" else 3600)
    session_id, request = with_request_in_flight(registry)
    if how == "the broker closes the session":
        registry.close(session_id)
        assert not registry.cancel_after_end(session_id, "trader", 7, timed_out=True)
    else:
        registry.end(session_id)
    if how == "the broker shuts down during the grace":
        registry.close_all()
    assert await settled(request) is withdrawn


async def test_a_timed_out_cancel_heard_before_the_session_end_stands() -> None:
    registry = SessionRegistry(end_grace=3600)
    session_id, request = with_request_in_flight(registry)
    session = registry.get(session_id, "trader")
    assert session is not None and session.withdraw(7, timed_out=True)
    registry.end(session_id)
    assert await settled(request) is False


async def test_the_tombstone_answers_only_its_agent_and_only_within_the_grace() -> None:
    ticks = Ticks()
    registry = SessionRegistry(end_grace=3600, clock=ticks)
    session_id, request = with_request_in_flight(registry)
    registry.end(session_id)
    assert not registry.cancel_after_end(session_id, "auditor", 7, timed_out=True)
    assert not registry.cancel_after_end("no-such-session", "trader", 7, timed_out=True)
    ticks.now += 3600
    # Forgotten: no late cancellation reaches the request, which withdraws without waiting out its grace.
    assert not registry.cancel_after_end(session_id, "trader", 7, timed_out=True)
    assert await settled(request) is True
