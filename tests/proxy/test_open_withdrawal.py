"""A withdrawal that lands while a held call's approval is still being opened (the store's insert in
flight) must withdraw it, as one landing during the wait does; a client that only timed out leaves
it pending. Driven over the real /mcp and stdio endpoints of a running broker whose store holds its
next approval insert until the test lets it go."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.approvals import Approval, ApprovalStatus, NewApproval
from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.ports import ApprovalStore
from broker.proxy.agent import AgentContext
from broker.proxy.agent_request import AgentRequest
from broker.proxy.gateway import Gateway
from broker.proxy.stdio_endpoint import StdioEndpoint
from tests.e2e.harness import (
    FAST_APPROVALS,
    RawSession,
    RunningBroker,
    exchange_server,
    make_settings,
    running_broker,
)
from tests.e2e.test_approvals_flow import BIG_ORDER, POLICY, watch
from tests.e2e.test_approvals_withdrawal import until_no_agent_waits
from tests.proxy.test_session_end import TIMED_OUT, cancelled

pytestmark = pytest.mark.anyio

EXPLICIT = "user pressed stop"
PLACE_BIG_ORDER = {"name": "place_order", "arguments": BIG_ORDER}


class GatedStore:
    """The broker's store, whose next `find_or_create` waits for the test to `release` it.

    `answers_late`: the insert commits, then its answer waits (a store call still in flight when
    the request is withdrawn, already committed). Otherwise the wait comes first and the real
    operation follows in the same shield, as the real store runs each operation: the withdrawal
    is then heard at the first suspension after it."""

    def __init__(self, store: ApprovalStore, *, answers_late: bool) -> None:
        self._store = store
        self._answers_late = answers_late
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.opened: list[Approval] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def find_or_create(self, new: NewApproval, *, audit: AuditEvent) -> tuple[Approval, bool]:
        if self._answers_late:
            approval, created = await self._store.find_or_create(new, audit=audit)
            self.opened.append(approval)
            self.entered.set()
            await self.release.wait()
            return approval, created
        with anyio.CancelScope(shield=True):
            self.entered.set()
            await self.release.wait()
            approval, created = await self._store.find_or_create(new, audit=audit)
        self.opened.append(approval)
        return approval, created


def gate(running: RunningBroker, *, answers_late: bool = True) -> GatedStore:
    gated = GatedStore(running.broker.approvals.store, answers_late=answers_late)
    running.broker.approvals.store = gated  # type: ignore[assignment]
    return gated


async def assert_outcome(running: RunningBroker, approval: Approval, *, withdrawn: bool) -> None:
    store = running.broker.approvals.store
    stored = await store.get(approval.id)
    assert stored is not None
    async with running.approver("alice") as alice:
        prompts = (await alice.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
    if not withdrawn:
        assert stored.status is ApprovalStatus.PENDING
        assert [prompt["id"] for prompt in prompts] == [approval.id]
        return
    assert stored.status is ApprovalStatus.CANCELLED
    assert (stored.decided_by, stored.decided_via) == ("trader", "agent")
    last = (await store.audit_trail(approval.id))[-1]
    assert (last.event, last.actor, last.details) == (
        AuditEventKind.CANCELLED,
        "trader",
        {"reason": "the agent withdrew the call"},
    )
    assert prompts == []
    async with running.approver("alice") as alice:
        late = await alice.post(f"/api/approvals/{approval.id}/approve")
    assert late.status_code == 409 and "already cancelled" in late.json()["detail"]["message"]


# -- HTTP ---------------------------------------------------------------------------------------

SESSION_END = "session end"


async def withdrawn_while_opening(gated: GatedStore, raw: RawSession, request_id: int, how: str) -> Any:
    """Calls the held tool on `raw` and withdraws the call (`how`: a cancellation's reason, or
    SESSION_END) while `gated` holds its approval insert, then lets the store go; returns the
    call's answer."""
    answer: dict[str, Any] = {}
    async with anyio.create_task_group() as tasks:

        async def call() -> None:
            answer.update(await raw.rpc(request_id, "tools/call", PLACE_BIG_ORDER))

        tasks.start_soon(call)
        await gated.entered.wait()
        if how == SESSION_END:
            assert (await raw.http.delete("/mcp", headers=raw.headers)).status_code == 200
        else:
            withdraw = await raw.http.post("/mcp", json=cancelled(request_id, how), headers=raw.headers)
            assert withdraw.status_code == 202
        gated.release.set()
    return answer


@pytest.mark.parametrize(("how", "withdrawn"), [(EXPLICIT, True), (TIMED_OUT, False), (SESSION_END, True)])
async def test_http_a_withdrawal_while_the_approval_is_opened_withdraws_it(
    tmp_path: Path, how: str, withdrawn: bool
) -> None:
    approvals = replace(FAST_APPROVALS, session_end_grace=0.05)
    async with running_broker(
        make_settings(tmp_path, POLICY, exchange_server(), approvals=approvals)
    ) as running:
        gated = gate(running)
        with anyio.fail_after(30):
            async with running.raw() as http:
                raw = RawSession(http)
                await raw.open()
                answer = await withdrawn_while_opening(gated, raw, 2, how)
            assert answer["error"]["code"] == -32800
            (approval,) = gated.opened
            await assert_outcome(running, approval, withdrawn=withdrawn)


@pytest.mark.parametrize(("how", "withdrawn"), [(EXPLICIT, True), (TIMED_OUT, False)])
async def test_http_a_withdrawal_while_joining_a_call_nobody_waits_on_withdraws_it(
    tmp_path: Path, how: str, withdrawn: bool
) -> None:
    # The real store as it runs: joining from another session records the caller in a second
    # write, whose wait for SQLite's writer turn is where the withdrawal used to cut the open short.
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        with anyio.fail_after(30):
            async with running.raw() as dropped:
                first = RawSession(dropped)
                await first.open()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(first.rpc, 2, "tools/call", PLACE_BIG_ORDER)
                    approval = await feed.opened.receive()
                    tasks.cancel_scope.cancel()  # the connection closes: nobody waits, nothing withdrawn
            await until_no_agent_waits(running)
            gated = gate(running, answers_late=False)
            async with running.raw() as http:
                raw = RawSession(http)
                await raw.open()
                answer = await withdrawn_while_opening(gated, raw, 2, how)
            assert answer["error"]["code"] == -32800
            assert [joined.id for joined in gated.opened] == [approval.id]
            await assert_outcome(running, approval, withdrawn=withdrawn)


async def test_http_withdrawing_a_retry_while_it_joins_a_call_told_pending_leaves_that_call_pending(
    tmp_path: Path,
) -> None:
    # Told pending, the agent was promised the call stands until it cancels it explicitly by id.
    approvals = replace(FAST_APPROVALS, hold_budget=0.2)
    async with running_broker(
        make_settings(tmp_path, POLICY, exchange_server(), approvals=approvals)
    ) as running:
        with anyio.fail_after(30):
            async with running.raw() as http:
                raw = RawSession(http)
                await raw.open()
                first = await raw.rpc(2, "tools/call", PLACE_BIG_ORDER)
                approval_id = first["result"]["_meta"]["io.github.mcp-approval-broker/approval"]["approvalId"]
                gated = gate(running)
                answer = await withdrawn_while_opening(gated, raw, 3, EXPLICIT)
            assert answer["error"]["code"] == -32800
            (joined,) = gated.opened
            assert joined.id == approval_id
            await assert_outcome(running, joined, withdrawn=False)


# -- stdio --------------------------------------------------------------------------------------


class Output:
    """Where the stdio endpoint writes: each line it writes reaches the test as a message."""

    def __init__(self) -> None:
        self.send, self.messages = anyio.create_memory_object_stream[dict[str, Any]](100)

    def write(self, data: bytes) -> int:
        self.send.send_nowait(json.loads(data))
        return len(data)

    def flush(self) -> None:
        pass

    async def answer(self, request_id: int) -> dict[str, Any]:
        async for message in self.messages:
            if message.get("id") == request_id:
                return message
        raise AssertionError("the endpoint stopped writing")


class CallsEnded:
    """The broker's gateway, telling the test when a tools/call it served has ended (a cancelled
    request gets no answer on stdio)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.ended = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)

    async def dispatch(
        self, ctx: AgentContext, method: str, params: dict[str, Any] | None, request: AgentRequest
    ) -> dict[str, Any] | None:
        try:
            return await self._gateway.dispatch(ctx, method, params, request)
        finally:
            if method == "tools/call":
                self.ended.set()


def line(message: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n"


@pytest.mark.parametrize(("reason", "withdrawn"), [(EXPLICIT, True), (TIMED_OUT, False)])
async def test_stdio_a_withdrawal_while_the_approval_is_opened_withdraws_it(
    tmp_path: Path, reason: str, withdrawn: bool
) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        gated = gate(running)
        gateway = CallsEnded(running.broker.gateway)
        endpoint = StdioEndpoint(
            gateway,  # type: ignore[arg-type]
            agent="trader",
            changes=running.broker.changes,
            session_id="stdio:test",
        )
        stdin = asyncio.StreamReader()
        output = Output()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(endpoint.serve, stdin, output)
                initialize = {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t"},
                }
                stdin.feed_data(line({"id": 0, "method": "initialize", "params": initialize}))
                assert "result" in await output.answer(0)
                stdin.feed_data(line({"id": 2, "method": "tools/call", "params": PLACE_BIG_ORDER}))
                await gated.entered.wait()
                stdin.feed_data(line(cancelled(2, reason)))
                # Lines are handled in order: once the ping is answered, the cancellation was heard.
                stdin.feed_data(line({"id": 3, "method": "ping"}))
                assert "result" in await output.answer(3)
                gated.release.set()
                await gateway.ended.wait()
                stdin.feed_eof()
            (approval,) = gated.opened
            await assert_outcome(running, approval, withdrawn=withdrawn)
