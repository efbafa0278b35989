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
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from broker.proxy.agent import AgentContext
from broker.proxy.agent_request import AgentRequest
from broker.proxy.change_feed import ChangeFeed
from broker.proxy.gateway import Gateway
from broker.proxy.http_endpoint import PROTOCOL_VERSION_META_KEY
from broker.proxy.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_MESSAGE_BYTES,
    RequestId,
    RpcError,
    check_nesting,
    decode,
    encode,
    error_message,
    notification_message,
    result_message,
    valid_request_id,
)
from broker.proxy.waiting import only_timed_out

logger = logging.getLogger(__name__)


async def open_stdin() -> asyncio.StreamReader:
    """The process's stdin as a reader that takes messages as large as the HTTP endpoint does."""
    loop = asyncio.get_running_loop()
    # asyncio's default line limit is 64 KiB: one larger tools/call would end the whole session.
    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


class _LineTooLong(Exception):
    pass


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """The next line, b"" at the end of input; raises _LineTooLong once a longer line is skipped."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as end:
        return end.partial
    except asyncio.LimitOverrunError as overrun:
        consumed = overrun.consumed
    # Discard the line up to its end; the reader holds at most about two limits of it at a time.
    while True:
        await reader.readexactly(consumed)
        try:
            await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise _LineTooLong from None
        except asyncio.LimitOverrunError as overrun:
            consumed = overrun.consumed
        else:
            raise _LineTooLong


class StdioEndpoint:
    def __init__(self, gateway: Gateway, *, agent: str, changes: ChangeFeed, session_id: str) -> None:
        self._gateway = gateway
        self._changes = changes
        self._context = AgentContext(agent=agent, session=session_id)
        self._modern_context = AgentContext(agent=agent, session=session_id, modern=True)
        self._write_lock = anyio.Lock()
        self._in_flight: dict[RequestId, tuple[anyio.CancelScope, AgentRequest]] = {}
        self._output: BinaryIO = sys.stdout.buffer

    async def serve(self, reader: asyncio.StreamReader, output: BinaryIO) -> None:
        """Serves until the client closes stdin."""
        self._output = output
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._forward_changes)
            while True:
                try:
                    line = await _read_line(reader)
                except _LineTooLong:
                    await self._write(
                        error_message(
                            None,
                            RpcError(
                                INVALID_REQUEST,
                                f"Request too large: a message may be at most {MAX_MESSAGE_BYTES} bytes",
                            ),
                        )
                    )
                    continue
                if not line:
                    break
                if line.strip():
                    await self._handle_line(line, tasks)
            # The client closed stdin: it is gone for good, and so is its interest in held calls.
            for _, request in self._in_flight.values():
                request.withdrawn = True
            tasks.cancel_scope.cancel()

    async def _write(self, message: dict[str, Any]) -> None:
        try:
            data = encode(message)
        except TypeError:
            # Not even the standard library can write it (nesting beyond the interpreter's limit):
            # the client still gets an answer for its request id.
            logger.exception("cannot encode the answer to %r as JSON", message.get("id"))
            error = RpcError(
                INTERNAL_ERROR, "Internal error in the broker: the answer cannot be encoded as JSON"
            )
            data = encode(error_message(message.get("id"), error))
        async with self._write_lock:
            self._output.write(data + b"\n")
            self._output.flush()

    async def _forward_changes(self) -> None:
        with self._changes.subscribe() as queue:
            while True:
                await self._write(await queue.get())

    async def _handle_line(self, line: bytes, tasks: anyio.abc.TaskGroup) -> None:
        try:
            message = decode(line)
        except RpcError as exc:
            await self._write(error_message(None, exc))
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
        if params is not None:
            try:
                check_nesting(line, params)
            except RpcError as exc:
                await self._write(error_message(request_id, exc))
                return
        tasks.start_soon(self._serve_request, message, request_id, method, params)

    def _notification(self, method: str, params: Any) -> None:
        if method == "notifications/cancelled" and isinstance(params, dict):
            request_id = params.get("requestId")
            entry = self._in_flight.get(request_id) if valid_request_id(request_id) else None
            if entry is not None:
                scope, request = entry
                request.withdrawn = not only_timed_out(params.get("reason"))
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

        request = AgentRequest(notify)
        with anyio.CancelScope() as scope:
            self._in_flight[request_id] = (scope, request)
            try:
                return await self._gateway.dispatch(context, method, params, request)
            finally:
                self._in_flight.pop(request_id, None)
        return None
