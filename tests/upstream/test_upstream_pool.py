"""The pool: naming, supervision, reconnects with backoff, tool-list changes."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Mapping

import anyio
import pytest

from broker.proxy.upstream.base import (
    JsonObject,
    NotificationHandler,
    UpstreamConnection,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.http import StreamableHttpConnection
from broker.proxy.upstream.pool import UpstreamPool, UpstreamTool
from broker.proxy.upstream.spec import HttpServer, ServerSpec, SseServer, StdioServer
from broker.proxy.upstream.sse import SseConnection
from broker.proxy.upstream.stdio import StdioConnection
from tests.upstream.support import PAGED_SERVER, DemoHttpServer, Notifications, demo_stdio, unused_port

pytestmark = pytest.mark.anyio

StartServer = Callable[[str], Awaitable[DemoHttpServer]]

TIME_SERVER = StdioServer(
    name="time",
    command=sys.executable,
    args=("-m", "mcp_server_time", "--local-timezone", "UTC"),
    env={},
    cwd=None,
)


class RecordingSleep:
    """Stands in for the backoff sleep: records each delay, returns at once for the first `allowed`
    calls and then blocks, so a test can hold a server in backoff as long as it likes."""

    def __init__(self, allowed: int) -> None:
        self.delays: list[float] = []
        self.allowed = allowed
        self._called = anyio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self._called.set()
        self._called = anyio.Event()
        if len(self.delays) > self.allowed:
            await anyio.sleep_forever()

    async def wait_for_calls(self, count: int, timeout: float = 15) -> None:
        with anyio.fail_after(timeout):
            while len(self.delays) < count:
                await self._called.wait()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ObservedConnection:
    """A real connection that tells the test whenever it finished a request or closed."""

    def __init__(self, inner: UpstreamConnection, observer: ObservedConnections) -> None:
        self.inner = inner
        self.server = inner.server
        self._observer = observer

    async def start(self) -> JsonObject:
        return await self.inner.start()

    async def request(
        self,
        method: str,
        params: JsonObject | None,
        *,
        on_notification: NotificationHandler | None = None,
        timeout: float | None = None,
        caller: UpstreamCaller | None = None,
    ) -> JsonObject:
        try:
            return await self.inner.request(
                method, params, on_notification=on_notification, timeout=timeout, caller=caller
            )
        finally:
            self._observer.touch()

    async def notify(self, method: str, params: JsonObject | None = None) -> None:
        await self.inner.notify(method, params)

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()

    async def aclose(self) -> None:
        await self.inner.aclose()
        self._observer.touch()


class ObservedConnections:
    """A connection factory making real connections, so a test can wait for the pool to act on them."""

    def __init__(self) -> None:
        self.made: list[ObservedConnection] = []
        self._changed = anyio.Event()

    def __call__(self, spec: ServerSpec, handler: NotificationHandler) -> UpstreamConnection:
        inner: UpstreamConnection
        match spec:
            case StdioServer():
                inner = StdioConnection(spec, handler, environ=os.environ)
            case HttpServer():
                inner = StreamableHttpConnection(spec, handler)
            case SseServer():
                inner = SseConnection(spec, handler)
        connection = ObservedConnection(inner, self)
        self.made.append(connection)
        return connection

    def touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 15) -> None:
        with anyio.fail_after(timeout):
            while not condition():
                await self._changed.wait()


def servers(*specs: ServerSpec) -> dict[str, ServerSpec]:
    return {spec.name: spec for spec in specs}


def state_of(pool: UpstreamPool, name: str) -> str:
    return next(status.state for status in pool.status() if status.name == name)


async def test_one_server_keeps_the_upstream_names(environ: Mapping[str, str]) -> None:
    clock = ManualClock()
    async with UpstreamPool(servers(demo_stdio()), environ=environ, clock=clock) as pool:
        await pool.wait_ready(15)
        echo = pool.resolve("echo")
        assert echo is not None
        with anyio.fail_after(10):
            result = await pool.call_tool(echo, {"text": "hi"})
        [status] = pool.status()
        version = pool.protocol_version("demo")
    assert version == "2025-11-25" and pool.protocol_version("nobody") is None
    assert pool.protocol_version("demo") is None  # the pool has stopped: no connection, no version
    assert echo == UpstreamTool(server="demo", name="echo", exposed_name="echo", definition=echo.definition)
    assert echo.definition["name"] == "echo"
    assert "inputSchema" in echo.definition
    assert result["content"] == [{"type": "text", "text": "hi"}]
    assert [tool.exposed_name for tool in pool.tools()][:3] == ["echo", "add", "slow"]
    assert status.state == "connected"
    assert status.connected_since == clock.now
    assert status.tool_count == len(pool.tools())
    assert status.last_error is None
    assert pool.resolve("demo__echo") is None


async def test_several_servers_get_qualified_names(
    environ: Mapping[str, str], shared_http_servers: dict[str, DemoHttpServer]
) -> None:
    legacy = shared_http_servers["sse"]
    async with UpstreamPool(servers(legacy.spec("demo"), TIME_SERVER), environ=environ) as pool:
        await pool.wait_ready(15)
        echo = pool.resolve("demo__echo")
        convert = pool.resolve("time__convert_time")
        assert echo is not None and convert is not None
        with anyio.fail_after(10):
            echoed = await pool.call_tool(echo, {"text": "qualified"})
            converted = await pool.call_tool(
                convert, {"source_timezone": "UTC", "time": "08:00", "target_timezone": "Europe/London"}
            )
    names = [tool.exposed_name for tool in pool.tools()]
    assert "demo__echo" in names and "time__get_current_time" in names
    assert names.index("demo__echo") < names.index("time__get_current_time")  # configuration order
    assert (echo.server, echo.name, echo.definition["name"]) == ("demo", "echo", "demo__echo")
    assert (convert.server, convert.name, convert.definition["name"]) == (
        "time",
        "convert_time",
        "time__convert_time",
    )
    assert pool.resolve("echo") is None
    assert echoed["content"][0]["text"] == "qualified"
    assert converted["isError"] is False


async def test_call_tool_passes_meta_and_routes_progress(environ: Mapping[str, str]) -> None:
    progress = Notifications()
    async with UpstreamPool(servers(demo_stdio()), environ=environ) as pool:
        await pool.wait_ready(15)
        slow = pool.resolve("slow")
        assert slow is not None
        with anyio.fail_after(10):
            result = await pool.call_tool(
                slow,
                {"seconds": 0.1, "steps": 2},
                meta={"progressToken": "agent-7"},
                on_notification=progress,
            )
            with pytest.raises(UpstreamTimeout):
                await pool.call_tool(slow, {"seconds": 10}, timeout=0.2)
    assert result["content"][0]["text"] == "slept 0.1"
    assert [message["params"]["progressToken"] for message in progress.received] == ["agent-7", "agent-7"]


async def test_a_crash_mid_call_fails_that_call_and_the_pool_reconnects(environ: Mapping[str, str]) -> None:
    sleep = RecordingSleep(allowed=10)
    observed = ObservedConnections()
    async with UpstreamPool(
        servers(demo_stdio()), environ=environ, sleep=sleep, connection_factory=observed
    ) as pool:
        await pool.wait_ready(15)
        crash, echo = pool.resolve("crash"), pool.resolve("echo")
        assert crash is not None and echo is not None
        with anyio.fail_after(10), pytest.raises(UpstreamUnavailable) as raised:
            await pool.call_tool(crash, {})
        await observed.wait_until(lambda: len(observed.made) == 2 and state_of(pool, "demo") == "connected")
        with anyio.fail_after(10):
            result = await pool.call_tool(echo, {"text": "back"})
    assert "server process exited with code 3" in str(raised.value)
    assert "reconnecting" in str(raised.value)
    assert sleep.delays == [0.5]
    assert result["content"][0]["text"] == "back"


async def test_backoff_grows_and_resets_after_a_healthy_connection(environ: Mapping[str, str]) -> None:
    clock, sleep, observed = ManualClock(), RecordingSleep(allowed=10), ObservedConnections()
    async with UpstreamPool(
        servers(demo_stdio()), environ=environ, clock=clock, sleep=sleep, connection_factory=observed
    ) as pool:

        async def crash_after(lifetime: float, connections: int) -> None:
            await observed.wait_until(
                lambda: len(observed.made) == connections and state_of(pool, "demo") == "connected"
            )
            clock.now += lifetime
            crash = pool.resolve("crash")
            assert crash is not None
            with anyio.fail_after(10), pytest.raises(UpstreamUnavailable):
                await pool.call_tool(crash, {})
            await sleep.wait_for_calls(connections)

        await crash_after(100, connections=1)  # healthy
        await crash_after(1, connections=2)  # short-lived: the delay keeps growing
        await crash_after(2, connections=3)
        await crash_after(60, connections=4)  # healthy again: back to the start
    assert sleep.delays == [0.5, 1.0, 2.0, 0.5]


async def test_an_unreachable_server_backs_off_and_the_rest_keep_working(environ: Mapping[str, str]) -> None:
    sleep = RecordingSleep(allowed=7)
    gone_url = f"http://127.0.0.1:{unused_port()}/mcp"
    gone = HttpServer(name="gone", url=gone_url, headers={})
    async with UpstreamPool(servers(demo_stdio(), gone), environ=environ, sleep=sleep) as pool:
        with anyio.fail_after(20):
            await pool.wait_ready(15)
        await sleep.wait_for_calls(8)
        echo = pool.resolve("demo__echo")
        assert echo is not None
        with anyio.fail_after(10):
            echoed = await pool.call_tool(echo, {"text": "unaffected"})
        with pytest.raises(UpstreamUnavailable, match=r"cannot reach .*; reconnecting"):
            await pool.request("gone", "tools/list", None)
        with pytest.raises(UpstreamUnavailable, match="upstream 'gone'"):
            await pool.call_tool(UpstreamTool("gone", "search", "gone__search", {"name": "gone__search"}), {})
        with pytest.raises(UpstreamUnavailable, match="no such server"):
            await pool.request("nobody", "tools/list", None)
        statuses = {status.name: status for status in pool.status()}
    assert sleep.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert statuses["gone"].state == "backoff"
    assert statuses["gone"].tool_count == 0
    assert statuses["gone"].connected_since is None
    assert f"cannot reach {gone_url}" in (statuses["gone"].last_error or "")
    assert statuses["demo"].state == "connected"
    assert echoed["content"][0]["text"] == "unaffected"
    assert all(tool.server == "demo" for tool in pool.tools())


async def test_tools_of_a_server_that_went_down_stay_listed(environ: Mapping[str, str]) -> None:
    sleep = RecordingSleep(allowed=0)
    async with UpstreamPool(servers(demo_stdio()), environ=environ, sleep=sleep) as pool:
        await pool.wait_ready(15)
        crash, echo = pool.resolve("crash"), pool.resolve("echo")
        assert crash is not None and echo is not None
        with anyio.fail_after(10), pytest.raises(UpstreamUnavailable):
            await pool.call_tool(crash, {})
        await sleep.wait_for_calls(1)
        assert pool.resolve("echo") == echo
        with pytest.raises(
            UpstreamUnavailable, match=r"not connected \(server process exited with code 3\); reconnecting"
        ):
            await pool.call_tool(echo, {"text": "anyone?"})
        assert state_of(pool, "demo") == "backoff"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_list_change_refreshes_tools_and_tells_the_gateway(
    transport: str, environ: Mapping[str, str], start_http_server: StartServer
) -> None:
    spec = demo_stdio() if transport == "stdio" else (await start_http_server("http")).spec()
    announcements = Notifications()

    async def on_tools_changed() -> None:
        await announcements({"method": "tools changed"})

    async with UpstreamPool(servers(spec), environ=environ, on_tools_changed=on_tools_changed) as pool:
        await pool.wait_ready(15)
        await announcements.wait_for("tools changed", count=1)  # the first listing
        assert pool.resolve("extra") is None
        notify_change = pool.resolve("notify_change")
        assert notify_change is not None
        with anyio.fail_after(10):
            await pool.call_tool(notify_change, {})
        await announcements.wait_for("tools changed", count=2)
        extra = pool.resolve("extra")
        assert extra is not None
        with anyio.fail_after(10):
            result = await pool.call_tool(extra, {})
    assert result["content"][0]["text"] == "extra"
    assert len(announcements.received) == 2


async def test_tool_lists_are_followed_across_pages(environ: Mapping[str, str]) -> None:
    paged = StdioServer(name="paged", command=sys.executable, args=(str(PAGED_SERVER), "5"), env={}, cwd=None)
    async with UpstreamPool(servers(paged), environ=environ) as pool:
        await pool.wait_ready(15)
        assert [tool.exposed_name for tool in pool.tools()] == [
            "tool_1",
            "tool_2",
            "tool_3",
            "tool_4",
            "tool_5",
        ]


async def test_a_server_that_never_answers_hits_the_connect_timeout(environ: Mapping[str, str]) -> None:
    silent = StdioServer(
        name="silent", command=sys.executable, args=("-c", "import sys; sys.stdin.read()"), env={}, cwd=None
    )
    sleep = RecordingSleep(allowed=0)
    async with UpstreamPool(servers(silent), environ=environ, sleep=sleep, connect_timeout=0.3) as pool:
        with anyio.fail_after(10):
            await pool.wait_ready(15)
        await sleep.wait_for_calls(1)
        [status] = pool.status()
    assert status.state == "backoff"
    assert status.last_error == "no answer within the connect timeout (0.3 s)"


async def test_wait_ready_is_bounded_and_exit_stops_everything(environ: Mapping[str, str]) -> None:
    silent = StdioServer(
        name="silent", command=sys.executable, args=("-c", "import sys; sys.stdin.read()"), env={}, cwd=None
    )
    observed = ObservedConnections()
    with anyio.fail_after(15):
        async with UpstreamPool(
            servers(silent, demo_stdio()), environ=environ, connect_timeout=60, connection_factory=observed
        ) as pool:
            await observed.wait_until(lambda: state_of(pool, "demo") == "connected")
            await pool.wait_ready(0.3)  # returns although "silent" never answers
            states = {status.name: status.state for status in pool.status()}
    assert states == {"silent": "connecting", "demo": "connected"}
    assert [status.state for status in pool.status()] == ["stopped", "stopped"]
    for connection in observed.made:
        assert isinstance(connection.inner, StdioConnection)
        assert connection.inner.pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(connection.inner.pid, 0)


def test_server_keys_must_match_their_names(environ: Mapping[str, str]) -> None:
    with pytest.raises(ValueError, match="configured under 'a' is named 'demo'"):
        UpstreamPool({"a": demo_stdio()}, environ=environ)
