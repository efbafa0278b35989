"""JSON-RPC plumbing every upstream transport shares.

Messages stay plain dicts from ``orjson`` (or `broker.proxy.exact_json` where integers
outgrow 64 bits) end to end: the gateway forwards results untouched, so validating them
into models would only cost CPU on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import broker
from broker.proxy.upstream.base import (
    JsonObject,
    NotificationHandler,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-11-25"
HANDSHAKE_PROTOCOL_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
"""Versions a server may answer ``initialize`` with; the broker forwards raw results, so all of them work."""

METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603

_PROGRESS = "notifications/progress"
_LIST_CHANGED_SUFFIX = "/list_changed"


def initialize_params() -> JsonObject:
    return {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp-approval-broker", "version": broker.__version__},
    }


def negotiated_version(server: str, initialize_result: JsonObject) -> str:
    """The protocol version the server chose; refuses one the broker cannot speak."""
    version = initialize_result.get("protocolVersion")
    if version not in HANDSHAKE_PROTOCOL_VERSIONS:
        raise UpstreamUnavailable(
            server,
            f"server answered initialize with protocol version {version!r}; "
            f"the broker speaks {', '.join(sorted(HANDSHAKE_PROTOCOL_VERSIONS))}",
        )
    assert isinstance(version, str)
    return version


def request_message(request_id: int, method: str, params: JsonObject | None) -> JsonObject:
    if params is None:
        return {"jsonrpc": "2.0", "id": request_id, "method": method}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def notification_message(method: str, params: JsonObject | None) -> JsonObject:
    if params is None:
        return {"jsonrpc": "2.0", "method": method}
    return {"jsonrpc": "2.0", "method": method, "params": params}


def cancellation_message(request_id: int, reason: str) -> JsonObject:
    return notification_message("notifications/cancelled", {"requestId": request_id, "reason": reason})


async def answer_within(
    server: str,
    method: str,
    timeout: float | None,
    answer: Awaitable[JsonObject],
    abandon: Callable[[str], None],
) -> JsonObject:
    """Await a request's answer under the caller's deadline. A request given up on, by the
    deadline or by the caller's cancellation, is `abandon`ed with the reason, so the transport
    can tell the server to stop working on it."""
    try:
        if timeout is None:
            return await answer
        async with asyncio.timeout(timeout):
            return await answer
    except TimeoutError:
        abandon("timed out")
        raise UpstreamTimeout(server, f"no answer to {method} within {timeout:g} s") from None
    except asyncio.CancelledError:
        abandon("cancelled by the client")
        raise


def result_of(server: str, response: JsonObject) -> JsonObject:
    """The ``result`` of a response message, or the `UpstreamRpcError` its ``error`` describes."""
    result = response.get("result")
    if type(result) is dict:
        return result
    error = response.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        raise UpstreamRpcError(
            server,
            code if isinstance(code, int) else INTERNAL_ERROR,
            message if isinstance(message, str) else "(no message)",
            error.get("data"),
        )
    raise UpstreamRpcError(server, INTERNAL_ERROR, "malformed response: neither a result object nor an error")


def answer_server_request(message: JsonObject) -> JsonObject:
    """The broker's reply to a request the server sent it.

    The broker declares no client capabilities, so beyond ``ping`` (which every peer must
    answer) it has nothing to offer: sampling, elicitation and roots get "method not found".
    """
    method = message.get("method")
    if method == "ping":
        return {"jsonrpc": "2.0", "id": message.get("id"), "result": {}}
    return {
        "jsonrpc": "2.0",
        "id": message.get("id"),
        "error": {
            "code": METHOD_NOT_FOUND,
            "message": f"Method not found: {method} (not offered by the broker)",
        },
    }


class NotificationRouter:
    """Sends each server notification to whoever asked for it.

    Progress goes to the request that registered its ``progressToken``. A notification
    arriving on one request's own response stream goes to that request, unless it
    announces a list change: that concerns the whole connection however it travels.
    Everything else goes to the connection-level handler. Handlers run on the task that
    read the message, so they must not wait for answers from the same connection.
    """

    def __init__(self, server: str, connection_handler: NotificationHandler) -> None:
        self.server = server
        self._connection_handler = connection_handler
        self._progress_handlers: dict[Any, NotificationHandler] = {}

    def watch_progress(self, params: JsonObject | None, handler: NotificationHandler) -> object | None:
        """Route progress for the request carrying `params`; returns the token to `unwatch` later."""
        if params is None:
            return None
        meta = params.get("_meta")
        if type(meta) is not dict:
            return None
        token: object = meta.get("progressToken")
        if type(token) not in (str, int):
            return None
        self._progress_handlers[token] = handler
        return token

    def unwatch(self, token: object) -> None:
        self._progress_handlers.pop(token, None)

    async def route(self, message: JsonObject, request_handler: NotificationHandler | None = None) -> None:
        method = message.get("method")
        handler: NotificationHandler | None
        if method == _PROGRESS:
            params = message.get("params")
            token = params.get("progressToken") if type(params) is dict else None
            handler = self._progress_handlers.get(token) if type(token) in (str, int) else None
            if handler is None:
                handler = request_handler
            if handler is None:
                logger.debug("upstream '%s': progress for unknown token %r dropped", self.server, token)
                return
        elif request_handler is not None and not (
            isinstance(method, str) and method.endswith(_LIST_CHANGED_SUFFIX)
        ):
            handler = request_handler
        else:
            handler = self._connection_handler
        try:
            await handler(message)
        except Exception:
            logger.exception("upstream '%s': handler for %s failed", self.server, method)
