"""The seam between the gateway and the MCP servers behind it.

Exception tree::

    UpstreamError                 anything that kept a request from getting an upstream answer
    ├── UpstreamUnavailable       the request was not delivered: not connected, never reached,
    │   │                         or refused before the server could act on it
    │   └── UpstreamLost          the request was sent (or may have been), then the connection
    │                             dropped or the server died before its answer: it may have run
    ├── UpstreamTimeout           sent, but no answer within the deadline: it may have run
    ├── UpstreamRpcError          the upstream answered with a JSON-RPC error object
    └── MalformedResult           it answered ``tools/call`` with a result that is not a
                                  CallToolResult of its protocol version: the call may have run

`may_have_run` tells the two kinds of doubt apart from "never delivered": nothing in doubt
is re-sent, and the agent (or approver) is told to check the upstream before trying again.

Connections speak the handshake era of the protocol (``initialize``) to upstreams,
because that is what every released server understands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from broker.proxy.upstream.credentials.caller import UpstreamCaller

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


class NoCredential(UpstreamUnavailable):
    """No credential could be made for the call (token endpoint down or refusing, a claim a header
    template needs is missing): nothing was sent, and reconnecting does not fix it."""


class UpstreamLost(UpstreamUnavailable):
    """The connection ended after the request was written: the server may have acted on it."""


class UpstreamTimeout(UpstreamError):
    pass


def may_have_run(exc: UpstreamError) -> bool:
    """True when the request may have reached the server and run there although no answer came."""
    return isinstance(exc, UpstreamLost | UpstreamTimeout)


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
    ``notifications/cancelled`` upstream for that request. `caller` is the agent a
    ``tools/call`` is made for; only transports with per-agent credentials look at it.
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
        caller: UpstreamCaller | None = None,
    ) -> JsonObject: ...

    async def notify(self, method: str, params: JsonObject | None = None) -> None: ...

    async def wait_closed(self) -> None:
        """Returns once the connection is gone (process exited, stream broken, closed)."""
        ...

    async def aclose(self) -> None: ...
