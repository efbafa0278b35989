"""The seam between the gateway and the MCP servers behind it.

Exception tree::

    UpstreamError                 anything that kept a request from getting an upstream answer
    ├── UpstreamUnavailable       not connected: never reached, crashed, or dropped mid-call
    ├── UpstreamTimeout           connected, but no answer within the deadline
    ├── UpstreamRpcError          the upstream answered with a JSON-RPC error object
    └── MalformedResult           it answered ``tools/call`` with a result that is not a
                                  CallToolResult of its protocol version: the call may have run

Connections speak the handshake era of the protocol (``initialize``) to upstreams,
because that is what every released server understands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

JsonObject = dict[str, Any]
NotificationHandler = Callable[[JsonObject], Awaitable[None]]
"""Receives one JSON-RPC notification message (the whole ``{"jsonrpc", "method", "params"}`` dict)."""


class UpstreamError(Exception):
    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"upstream '{server}': {message}")
        self.server = server
        self.detail = message


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamRpcError(UpstreamError):
    def __init__(self, server: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(server, f"error {code}: {message}")
        self.code = code
        self.rpc_message = message
        self.data = data


class MalformedResult(UpstreamError):
    """Raised by the gateway, not by a connection: only it knows which shape a result must have.

    A result that is not a JSON object at all is an `UpstreamRpcError` from the connection."""

    def __init__(self, server: str, problem: str) -> None:
        super().__init__(server, f"malformed result: {problem}")
        self.problem = problem
        """What is wrong, as `broker.proxy.result_shape.tool_result_problem` said it."""


class UpstreamConnection(Protocol):
    """One live MCP client connection to one upstream server.

    `request` returns the JSON-RPC ``result`` object exactly as the upstream sent it.
    Notifications that belong to the request (progress carrying the request's
    ``_meta.progressToken``, or anything on the request's own response stream) go to
    its `on_notification`; all other server notifications go to the handler the
    connection was built with. Cancelling the task awaiting `request` sends
    ``notifications/cancelled`` upstream for that request.
    """

    server: str

    async def start(self) -> JsonObject:
        """Connect and run the initialize handshake; returns the initialize result."""
        ...

    async def request(
        self,
        method: str,
        params: JsonObject | None,
        *,
        on_notification: NotificationHandler | None = None,
        timeout: float | None = None,
    ) -> JsonObject: ...

    async def notify(self, method: str, params: JsonObject | None = None) -> None: ...

    async def wait_closed(self) -> None:
        """Returns once the connection is gone (process exited, stream broken, closed)."""
        ...

    async def aclose(self) -> None: ...
