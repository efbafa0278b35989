"""The three transports against the real demo server: handshake, calls, routing, cancellation, failure."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
import pytest

from broker.proxy.upstream.base import (
    JsonObject,
    NotificationHandler,
    UpstreamConnection,
    UpstreamLost,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
    may_have_run,
)
from broker.proxy.upstream.http import StreamableHttpConnection
from broker.proxy.upstream.spec import HttpServer, ServerSpec, SseServer, StdioServer
from broker.proxy.upstream.sse import SseConnection
from broker.proxy.upstream.stdio import StdioConnection
from tests.upstream.support import Notifications

pytestmark = pytest.mark.anyio


def connect(spec: ServerSpec, handler: NotificationHandler) -> UpstreamConnection:
    match spec:
        case StdioServer():
            return StdioConnection(spec, handler, environ=os.environ)
        case HttpServer():
            return StreamableHttpConnection(spec, handler)
        case SseServer():
            return SseConnection(spec, handler)


class Session:
    def __init__(self, connection: UpstreamConnection, notifications: Notifications, initialize: JsonObject):
        self.connection = connection
        self.notifications = notifications
        self.initialize = initialize

    async def call(
        self, tool: str, arguments: Mapping[str, object] | None = None, **kwargs: object
    ) -> JsonObject:
        params: JsonObject = {"name": tool, "arguments": dict(arguments or {})}
        return await self.connection.request("tools/call", params, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def open_session(spec: ServerSpec) -> AsyncIterator[Session]:
    notifications = Notifications()
    connection = connect(spec, notifications)
    try:
        with anyio.fail_after(15):
            initialize = await connection.start()
        yield Session(connection, notifications, initialize)
    finally:
        with anyio.fail_after(15):
            await connection.aclose()


@pytest.fixture
async def session(demo_spec: ServerSpec) -> AsyncIterator[Session]:
    async with open_session(demo_spec) as opened:
        yield opened


@pytest.fixture
async def fresh_session(fresh_demo_spec: ServerSpec) -> AsyncIterator[Session]:
    async with open_session(fresh_demo_spec) as opened:
        yield opened


def text_of(result: JsonObject) -> str:
    return str(result["content"][0]["text"])


async def test_handshake_lists_and_calls(session: Session) -> None:
    assert session.initialize["protocolVersion"] == "2025-11-25"
    assert session.initialize["serverInfo"]["name"] == "demo"
    with anyio.fail_after(10):
        listed = await session.connection.request("tools/list", None)
        echoed = await session.call("echo", {"text": "héllo"})
        added = await session.call("add", {"a": 2, "b": 40})
    assert {"echo", "add", "slow", "crash", "notify_change"} <= {tool["name"] for tool in listed["tools"]}
    assert echoed == {
        "content": [{"type": "text", "text": "héllo"}],
        "structuredContent": {"result": "héllo"},
        "isError": False,
    }
    assert added["structuredContent"] == {"result": 42}


async def test_concurrent_calls_get_their_own_answers(session: Session) -> None:
    answers: dict[int, str] = {}

    async def call(number: int) -> None:
        answers[number] = text_of(await session.call("echo", {"text": f"call {number}"}))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for number in range(20):
                tg.start_soon(call, number)
    assert answers == {number: f"call {number}" for number in range(20)}


async def test_json_rpc_errors_raise_and_tool_errors_pass_through(session: Session) -> None:
    with anyio.fail_after(10):
        with pytest.raises(UpstreamRpcError) as raised:
            await session.connection.request("no/such/method", None)
        failed_tool = await session.call("add", {"a": "not a number", "b": 1})
    assert raised.value.code == -32601
    assert raised.value.server == "demo"
    assert failed_tool["isError"] is True


async def test_progress_goes_to_the_call_that_asked_for_it(session: Session) -> None:
    first, second = Notifications(), Notifications()
    results: list[JsonObject] = []

    async def slow(token: str, handler: Notifications, steps: int) -> None:
        params = {
            "name": "slow",
            "arguments": {"seconds": 0.2, "steps": steps},
            "_meta": {"progressToken": token},
        }
        results.append(await session.connection.request("tools/call", params, on_notification=handler))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow, "first", first, 3)
            tg.start_soon(slow, "second", second, 2)
    assert [message["params"]["progress"] for message in first.received] == [1, 2, 3]
    assert {message["params"]["progressToken"] for message in first.received} == {"first"}
    assert [message["params"]["progress"] for message in second.received] == [1, 2]
    assert {message["params"]["progressToken"] for message in second.received} == {"second"}
    assert "notifications/progress" not in session.notifications.methods()
    assert len(results) == 2


async def test_list_changed_reaches_the_connection_handler(fresh_session: Session) -> None:
    session = fresh_session
    with anyio.fail_after(10):
        assert text_of(await session.call("notify_change")) == "changed"
        await session.notifications.wait_for("notifications/tools/list_changed")
        listed = await session.connection.request("tools/list", None)
    assert "extra" in {tool["name"] for tool in listed["tools"]}


async def test_server_requests_are_answered(session: Session) -> None:
    with anyio.fail_after(10):
        result = await session.call("probe_client")
    # ping must be answered; the broker offers no roots, so roots/list is "method not found".
    assert text_of(result) == "ping answered; roots/list refused with -32601"


async def test_cancelling_a_call_cancels_it_upstream(session: Session) -> None:
    progress = Notifications()
    params = {
        "name": "slow",
        "arguments": {"seconds": 30, "steps": 300, "tag": "cancel-me"},
        "_meta": {"progressToken": 1},
    }
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:

            async def doomed_call() -> None:
                await session.connection.request("tools/call", params, on_notification=progress)

            tg.start_soon(doomed_call)
            await progress.wait_for("notifications/progress")
            tg.cancel_scope.cancel()
        observed = await session.call("was_cancelled", {"tag": "cancel-me", "within": 5})
    assert observed["structuredContent"] == {"result": True}


async def test_timeout_raises_and_cancels_upstream(session: Session) -> None:
    progress = Notifications()
    params = {
        "name": "slow",
        "arguments": {"seconds": 30, "steps": 300, "tag": "too-slow"},
        "_meta": {"progressToken": "t"},
    }
    with anyio.fail_after(15):
        # The deadline leaves the tool ample time to start, or the cancel would overtake it.
        with pytest.raises(UpstreamTimeout, match=r"within 1 s"):
            await session.connection.request("tools/call", params, on_notification=progress, timeout=1)
        observed = await session.call("was_cancelled", {"tag": "too-slow", "within": 5})
        still_working = await session.call("echo", {"text": "after timeout"})
    assert progress.received, "the tool never started within the deadline"
    assert observed["structuredContent"] == {"result": True}
    assert text_of(still_working) == "after timeout"


async def test_server_dying_mid_call_fails_the_call_and_closes(fresh_session: Session) -> None:
    with anyio.fail_after(15):
        # The call was sent and the server died running it: it may have run.
        with pytest.raises(UpstreamLost) as lost:
            await fresh_session.call("crash")
        assert may_have_run(lost.value)
        await fresh_session.connection.wait_closed()
        # A call after the connection is gone was never sent.
        with pytest.raises(UpstreamUnavailable) as refused:
            await fresh_session.call("echo", {"text": "anyone there?"})
        assert not may_have_run(refused.value)
