"""One supervised connection per configured upstream server, and the tools they offer together.

Each server gets a supervisor task that connects (bounded by a connect timeout), runs the
handshake, lists the server's tools and then waits for the connection to end, reconnecting
with exponential backoff. A server that is down keeps its last known tools listed; calling
one fails fast with `UpstreamUnavailable` instead of waiting for the reconnect.

Whenever a server's tool list changes (its first listing, a ``tools/list_changed`` from
the server, or a reconnect that finds different tools) the pool calls ``on_tools_changed``.

The pool keeps the protocol version each live connection negotiated (`protocol_version`): the
gateway checks each server's results against that version's shapes.

Tool names: with exactly one server, agents see the upstream names unchanged; with several,
every name is qualified as ``server__tool`` (server names cannot contain ``__``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import anyio
from anyio.abc import TaskGroup

from broker.proxy.upstream.base import (
    JsonObject,
    NoCredential,
    NotificationHandler,
    UpstreamConnection,
    UpstreamError,
    UpstreamLost,
    UpstreamUnavailable,
)
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.provider import UpstreamCredentials
from broker.proxy.upstream.http import StreamableHttpConnection
from broker.proxy.upstream.spec import QUALIFIER_SEPARATOR, HttpServer, ServerSpec, SseServer, StdioServer
from broker.proxy.upstream.sse import SseConnection
from broker.proxy.upstream.stdio import StdioConnection

logger = logging.getLogger(__name__)

INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 10.0
"""A connection that lived this long counts as healthy: losing it restarts the backoff from the beginning."""
CLOSE_TIMEOUT_SECONDS = 8.0
MAX_TOOL_PAGES = 1000

ConnectionFactory = Callable[[ServerSpec, NotificationHandler], UpstreamConnection]
ServerState = Literal["connecting", "connected", "backoff", "stopped"]


@runtime_checkable
class ExplainsClosing(Protocol):
    """A connection that can say why it ended (all of this package's transports can)."""

    @property
    def close_reason(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class UpstreamTool:
    server: str
    name: str
    """The name the upstream knows the tool by."""
    exposed_name: str
    """The name agents see."""
    definition: dict[str, Any]
    """The tool object from ``tools/list`` as the upstream sent it, except ``name`` is `exposed_name`."""


@dataclass(frozen=True, slots=True)
class ServerStatus:
    name: str
    state: ServerState
    last_error: str | None
    tool_count: int
    connected_since: float | None
    """When the current connection was made, on the pool's clock; None while not connected."""


class _Server:
    """The pool's mutable view of one upstream."""

    __slots__ = (
        "connected_since",
        "last_error",
        "name",
        "protocol_version",
        "refresh_wanted",
        "settled",
        "spec",
        "state",
        "tools",
    )

    def __init__(self, spec: ServerSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.state: ServerState = "connecting"
        self.last_error: str | None = None
        self.tools: tuple[UpstreamTool, ...] = ()
        self.connected_since: float | None = None
        self.protocol_version: str | None = None
        """What the current connection's handshake agreed on; None while not connected."""
        self.settled = anyio.Event()
        """Set once the first connection attempt has succeeded or failed."""
        self.refresh_wanted = anyio.Event()


class UpstreamPool:
    def __init__(
        self,
        servers: Mapping[str, ServerSpec],
        *,
        on_tools_changed: Callable[[], Awaitable[None]] | None = None,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        connect_timeout: float = 20.0,
        connection_factory: ConnectionFactory | None = None,
    ) -> None:
        for key, spec in servers.items():
            if key != spec.name:
                raise ValueError(f"server configured under {key!r} is named {spec.name!r}")
        self._servers = {name: _Server(spec) for name, spec in servers.items()}
        self._qualify = len(servers) != 1
        self._on_tools_changed = on_tools_changed
        self._environ = environ
        self._clock = clock
        self._sleep = sleep
        self._connect_timeout = connect_timeout
        self._connection_factory = connection_factory or self._connect_default
        self._connections: dict[str, UpstreamConnection] = {}
        self._credentials: dict[str, UpstreamCredentials] = {}
        self._tools: tuple[UpstreamTool, ...] = ()
        self._tools_by_exposed_name: dict[str, UpstreamTool] = {}
        self._task_group: TaskGroup | None = None
        self._closing = False

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("the pool is already running")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        for server in self._servers.values():
            self._task_group.start_soon(self._supervise, server, name=f"upstream supervisor '{server.name}'")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None, "__aexit__ without __aenter__"
        self._closing = True
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, traceback)
        finally:
            for credentials in self._credentials.values():
                with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
                    await credentials.aclose()

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every server has connected once or failed once, or `timeout` passes."""
        with anyio.move_on_after(timeout):
            for server in self._servers.values():
                await server.settled.wait()

    def tools(self) -> Sequence[UpstreamTool]:
        return self._tools

    def resolve(self, exposed_name: str) -> UpstreamTool | None:
        return self._tools_by_exposed_name.get(exposed_name)

    def is_connected(self, server: str) -> bool:
        known = self._servers.get(server)
        return known is not None and known.state == "connected"

    def protocol_version(self, server: str) -> str | None:
        """The protocol version `server`'s current connection negotiated; None while it has none."""
        known = self._servers.get(server)
        return None if known is None else known.protocol_version

    def status(self) -> list[ServerStatus]:
        return [
            ServerStatus(
                name=server.name,
                state=server.state,
                last_error=server.last_error,
                tool_count=len(server.tools),
                connected_since=server.connected_since,
            )
            for server in self._servers.values()
        ]

    async def call_tool(
        self,
        tool: UpstreamTool,
        arguments: dict[str, Any] | None,
        *,
        meta: dict[str, Any] | None = None,
        on_notification: NotificationHandler | None = None,
        timeout: float | None = None,
        caller: UpstreamCaller | None = None,
    ) -> dict[str, Any]:
        connection = self._connections.get(tool.server)
        if connection is None:
            raise self._unavailable(tool.server)
        params: dict[str, Any] = {"name": tool.name}
        if arguments is not None:
            params["arguments"] = arguments
        if meta is not None:
            params["_meta"] = meta
        try:
            return await connection.request(
                "tools/call", params, on_notification=on_notification, timeout=timeout, caller=caller
            )
        except NoCredential:
            raise  # nothing was sent and the connection is fine: reconnecting is not the answer
        except UpstreamUnavailable as exc:
            raise self._unavailable(tool.server, exc.detail, lost=isinstance(exc, UpstreamLost)) from exc

    async def request(
        self,
        server: str,
        method: str,
        params: JsonObject | None,
        *,
        on_notification: NotificationHandler | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        connection = self._connections.get(server)
        if connection is None:
            raise self._unavailable(server)
        try:
            return await connection.request(method, params, on_notification=on_notification, timeout=timeout)
        except UpstreamUnavailable as exc:
            raise self._unavailable(
                server, exc.detail, connection, lost=isinstance(exc, UpstreamLost)
            ) from exc

    def _unavailable(
        self,
        name: str,
        cause: str | None = None,
        connection: UpstreamConnection | None = None,
        *,
        lost: bool = False,
    ) -> UpstreamUnavailable:
        """The error for the agent, saying what the pool does next; `lost` keeps `UpstreamLost`."""
        kind = UpstreamLost if lost else UpstreamUnavailable
        server = self._servers.get(name)
        if server is None:
            return UpstreamUnavailable(name, "no such server is configured")
        if cause is None:
            cause = f"not connected ({server.last_error})" if server.last_error else "not connected yet"
        elif isinstance(connection, ExplainsClosing) and connection.close_reason is None:
            return kind(name, cause)  # that one request failed; the connection stays
        if self._closing or server.state == "stopped":
            return kind(name, f"{cause}; the gateway is shutting down")
        return kind(name, f"{cause}; reconnecting")

    def _credentials_for(self, spec: HttpServer | SseServer) -> UpstreamCredentials | None:
        """One per upstream for the pool's life, so tokens survive reconnects."""
        if spec.auth is None:
            return None
        credentials = self._credentials.get(spec.name)
        if credentials is None:
            credentials = self._credentials[spec.name] = UpstreamCredentials(
                spec.auth, server=spec.name, network=spec.network
            )
        return credentials

    def _connect_default(self, spec: ServerSpec, on_notification: NotificationHandler) -> UpstreamConnection:
        match spec:
            case StdioServer():
                return StdioConnection(spec, on_notification, environ=self._environ)
            case HttpServer():
                return StreamableHttpConnection(
                    spec,
                    on_notification,
                    connect_timeout=self._connect_timeout,
                    credentials=self._credentials_for(spec),
                )
            case SseServer():
                return SseConnection(
                    spec,
                    on_notification,
                    connect_timeout=self._connect_timeout,
                    credentials=self._credentials_for(spec),
                )

    async def _supervise(self, server: _Server) -> None:
        backoff = INITIAL_BACKOFF_SECONDS
        try:
            while True:
                server.state = "connecting"
                connected_at = await self._run_connection(server)
                if connected_at is not None and self._clock() - connected_at >= HEALTHY_AFTER_SECONDS:
                    backoff = INITIAL_BACKOFF_SECONDS
                server.state = "backoff"
                logger.info("upstream '%s': reconnecting in %g s", server.name, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            server.state = "stopped"
            server.connected_since = None

    async def _run_connection(self, server: _Server) -> float | None:
        """Connect, serve until the connection ends, and return when it was made (None if it never was)."""

        async def on_notification(message: JsonObject) -> None:
            if message.get("method") == "notifications/tools/list_changed":
                server.refresh_wanted.set()
            else:
                logger.debug("upstream '%s': notification %s", server.name, message.get("method"))

        server.refresh_wanted = anyio.Event()
        connection: UpstreamConnection | None = None
        try:
            try:
                connection = self._connection_factory(server.spec, on_notification)
                with anyio.fail_after(self._connect_timeout):
                    initialized = await connection.start()
                    tools = await self._list_tools(server, connection)
            except TimeoutError:
                self._note_failure(
                    server, f"no answer within the connect timeout ({self._connect_timeout:g} s)"
                )
                return None
            except Exception as exc:
                # Anything from a spawn or handshake (bad command, refused, garbage) is this server's failure.
                self._note_failure(server, exc.detail if isinstance(exc, UpstreamError) else repr(exc))
                return None
            connected_at = self._clock()
            server.state = "connected"
            server.connected_since = connected_at
            version = initialized.get("protocolVersion")
            server.protocol_version = version if isinstance(version, str) else None
            server.last_error = None
            self._connections[server.name] = connection
            logger.info("upstream '%s': connected, %d tools", server.name, len(tools))
            changed = self._install_tools(server, tools)
            server.settled.set()
            if changed:
                await self._announce_tools_changed()
            async with anyio.create_task_group() as follow:
                follow.start_soon(self._follow_tool_changes, server, connection)
                await connection.wait_closed()
                follow.cancel_scope.cancel()
            reason = connection.close_reason if isinstance(connection, ExplainsClosing) else None
            server.last_error = reason or "connection lost"
            return connected_at
        finally:
            self._connections.pop(server.name, None)
            server.connected_since = None
            server.protocol_version = None
            if connection is not None:
                with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
                    try:
                        await connection.aclose()
                    except Exception:
                        logger.exception("upstream '%s': closing the connection failed", server.name)

    def _note_failure(self, server: _Server, error: str) -> None:
        server.last_error = error
        server.settled.set()
        logger.warning("upstream '%s': cannot connect: %s", server.name, error)

    async def _follow_tool_changes(self, server: _Server, connection: UpstreamConnection) -> None:
        while True:
            await server.refresh_wanted.wait()
            server.refresh_wanted = anyio.Event()
            try:
                tools = await self._list_tools(server, connection)
            except UpstreamError as exc:
                logger.warning("upstream '%s': re-listing tools failed: %s", server.name, exc)
                continue
            if self._install_tools(server, tools):
                await self._announce_tools_changed()

    async def _list_tools(self, server: _Server, connection: UpstreamConnection) -> tuple[UpstreamTool, ...]:
        tools: dict[str, UpstreamTool] = {}
        cursor: object = None
        for _ in range(MAX_TOOL_PAGES):
            page = await connection.request("tools/list", None if cursor is None else {"cursor": cursor})
            listed = page.get("tools")
            if not isinstance(listed, list):
                raise UpstreamUnavailable(server.name, "tools/list answer has no 'tools' list")
            for definition in listed:
                tool = self._tool(server.name, definition)
                if tool is None:
                    logger.warning(
                        "upstream '%s': ignoring a tool without a name: %.200r", server.name, definition
                    )
                elif tool.name in tools:
                    logger.warning("upstream '%s': ignoring a second tool named %r", server.name, tool.name)
                else:
                    tools[tool.name] = tool
            cursor = page.get("nextCursor")
            if cursor is None or cursor == "":
                return tuple(tools.values())
        raise UpstreamUnavailable(server.name, f"tools/list still paginating after {MAX_TOOL_PAGES} pages")

    def _tool(self, server: str, definition: object) -> UpstreamTool | None:
        if type(definition) is not dict:
            return None
        name = definition.get("name")
        if not isinstance(name, str) or not name:
            return None
        if not self._qualify:
            return UpstreamTool(server=server, name=name, exposed_name=name, definition=definition)
        exposed_name = f"{server}{QUALIFIER_SEPARATOR}{name}"
        return UpstreamTool(
            server=server,
            name=name,
            exposed_name=exposed_name,
            definition={**definition, "name": exposed_name},
        )

    def _install_tools(self, server: _Server, tools: tuple[UpstreamTool, ...]) -> bool:
        """Make `tools` the server's current list; returns whether that changed the list."""
        if tools == server.tools:
            return False
        server.tools = tools
        self._tools = tuple(tool for each in self._servers.values() for tool in each.tools)
        self._tools_by_exposed_name = {tool.exposed_name: tool for tool in self._tools}
        return True

    async def _announce_tools_changed(self) -> None:
        if self._on_tools_changed is not None:
            try:
                await self._on_tools_changed()
            except Exception:
                logger.exception("on_tools_changed callback failed")
