"""The response side of one HTTP exchange on `/mcp`: writing it (one JSON body, or an SSE stream once
a notification must go first), and noticing that the client hung up while a slow call runs."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import anyio
from starlette.types import Message, Receive, Send

from broker.proxy.agent_request import AgentRequest
from broker.proxy.jsonrpc import RequestId, RpcError, encode, error_message, notification_message

JSON_HEADERS: Final = [(b"content-type", b"application/json")]
SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
# A silent long call is watched for a vanished client only after this long: the fast
# path must not pay for a watcher task on every call.
DISCONNECT_WATCH_DELAY: Final = 0.25


def sse_event(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + encode(message) + b"\n\n"


class ResponseChannel:
    """One POST's response: a single JSON body, or an SSE stream once a notification must go first."""

    __slots__ = ("_extra_headers", "_send", "_streaming", "accepts_sse")

    def __init__(self, send: Send, *, accepts_sse: bool, extra_headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self.accepts_sse = accepts_sse
        self._extra_headers = extra_headers
        self._streaming = False

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        if not self.accepts_sse:
            return
        await self.start_stream()
        await self._send(
            {
                "type": "http.response.body",
                "body": sse_event(notification_message(method, params)),
                "more_body": True,
            }
        )

    async def start_stream(self) -> None:
        if not self._streaming:
            self._streaming = True
            await self._send(
                {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + self._extra_headers}
            )

    async def keepalive(self) -> None:
        if self._streaming:
            await self._send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})

    async def finish(self, message: dict[str, Any], status: int = 200) -> None:
        if self._streaming:
            await self._send({"type": "http.response.body", "body": sse_event(message), "more_body": False})
            return
        body = encode(message)
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *JSON_HEADERS,
                    (b"content-length", str(len(body)).encode()),
                    *self._extra_headers,
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": body})


async def respond(
    send: Send, status: int, payload: dict[str, Any] | None, headers: list[tuple[bytes, bytes]]
) -> None:
    body = encode(payload) if payload is not None else b""
    response_headers = [(b"content-length", str(len(body)).encode()), *headers]
    if payload is not None:
        response_headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


async def reject(
    send: Send,
    status: int,
    code: int,
    message: str,
    *,
    request_id: RequestId | None = None,
    headers: Any = (),
) -> None:
    await respond(send, status, error_message(request_id, RpcError(code, message)), list(headers))


class DisconnectWatch:
    """Cancels a request whose client hung up, but only starts watching once the call turns out slow."""

    __slots__ = ("_receive", "_request", "_scope", "_task", "_timer", "disconnected")

    def __init__(self, receive: Receive, scope: anyio.CancelScope, withdraws: AgentRequest | None) -> None:
        self._receive = receive
        self._scope = scope
        self._request = withdraws
        self._task: asyncio.Task[None] | None = None
        self.disconnected = False
        self._timer = asyncio.get_running_loop().call_later(DISCONNECT_WATCH_DELAY, self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        message: Message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            if self._request is not None:
                self._request.withdrawn = True
            self._scope.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
