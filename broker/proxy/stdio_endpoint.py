"""`broker serve --stdio`: the gateway for clients that only launch stdio servers.

One process serves one client, so the process is the session; the agent identity is
whoever launched it (named on the command line), as with any local stdio server.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, BinaryIO

import anyio
import orjson
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from broker.proxy.change_feed import ChangeFeed
from broker.proxy.gateway import AgentContext, AgentRequest, Gateway
from broker.proxy.http_endpoint import PROTOCOL_VERSION_META_KEY
from broker.proxy.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    RequestId,
    RpcError,
    error_message,
    notification_message,
    result_message,
    valid_request_id,
)

logger = logging.getLogger(__name__)


class StdioEndpoint:
    def __init__(self, gateway: Gateway, *, agent: str, changes: ChangeFeed, session_id: str) -> None:
        self._gateway = gateway
        self._changes = changes
        self._context = AgentContext(agent=agent, session=session_id)
        self._modern_context = AgentContext(agent=agent, session=session_id, modern=True)
        self._write_lock = anyio.Lock()
        self._in_flight: dict[RequestId, anyio.CancelScope] = {}
        self._output: BinaryIO = sys.stdout.buffer

    async def serve(self, reader: asyncio.StreamReader, output: BinaryIO) -> None:
        """Serves until the client closes stdin."""
        self._output = output
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._forward_changes)
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.strip():
                    await self._handle_line(line, tasks)
            tasks.cancel_scope.cancel()

    async def _write(self, message: dict[str, Any]) -> None:
        async with self._write_lock:
            self._output.write(orjson.dumps(message) + b"\n")
            self._output.flush()

    async def _forward_changes(self) -> None:
        with self._changes.subscribe() as queue:
            while True:
                await self._write(await queue.get())

    async def _handle_line(self, line: bytes, tasks: anyio.abc.TaskGroup) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            await self._write(error_message(None, RpcError(PARSE_ERROR, f"Parse error: {exc}")))
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            await self._write(
                error_message(
                    None, RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object")
                )
            )
            return
        method = message.get("method")
        request_id: Any = message.get("id")
        if not isinstance(method, str):
            if "id" in message and ("result" in message or "error" in message):
                return
            await self._write(
                error_message(None, RpcError(INVALID_REQUEST, "Invalid Request: missing 'method'"))
            )
            return
        params = message.get("params")
        if "id" not in message:
            self._notification(method, params)
            return
        if not valid_request_id(request_id):
            await self._write(error_message(None, RpcError(INVALID_REQUEST, "Invalid Request: bad 'id'")))
            return
        if params is not None and not isinstance(params, dict):
            await self._write(
                error_message(request_id, RpcError(INVALID_PARAMS, "'params' must be an object"))
            )
            return
        tasks.start_soon(self._serve_request, message, request_id, method, params)

    def _notification(self, method: str, params: Any) -> None:
        if method == "notifications/cancelled" and isinstance(params, dict):
            scope = self._in_flight.get(params.get("requestId"))  # type: ignore[arg-type]
            if scope is not None:
                scope.cancel()

    async def _serve_request(
        self, message: dict[str, Any], request_id: RequestId, method: str, params: dict[str, Any] | None
    ) -> None:
        meta = params.get("_meta") if params else None
        modern = isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta
        try:
            if method == "initialize":
                result: dict[str, Any] | None = self._gateway.initialize_result(params)
            elif modern:
                route = classify_inbound_request(message, supported_modern_versions=MODERN_PROTOCOL_VERSIONS)
                if isinstance(route, InboundLadderRejection):
                    raise RpcError(route.code, route.message, route.data)
                if method == "server/discover":
                    result = self._gateway.discover_result()
                else:
                    result = await self._dispatch(self._modern_context, request_id, method, params)
            else:
                result = await self._dispatch(self._context, request_id, method, params)
        except RpcError as exc:
            await self._write(error_message(request_id, exc))
            return
        except Exception:
            logger.exception("request %r (%s) failed", request_id, method)
            await self._write(
                error_message(request_id, RpcError(INTERNAL_ERROR, "Internal error in the broker"))
            )
            return
        if result is not None:
            await self._write(result_message(request_id, result))

    async def _dispatch(
        self, context: AgentContext, request_id: RequestId, method: str, params: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The result, or None when the client cancelled the request (which then gets no response)."""

        async def notify(notification_method: str, notification_params: dict[str, Any]) -> None:
            await self._write(notification_message(notification_method, notification_params))

        with anyio.CancelScope() as scope:
            self._in_flight[request_id] = scope
            try:
                return await self._gateway.dispatch(context, method, params, AgentRequest(notify))
            finally:
                self._in_flight.pop(request_id, None)
        return None
