"""Request/response matching for transports that deliver every server message on one stream.

stdio and the legacy HTTP+SSE transport both do: requests go out one way, and responses,
notifications and server requests all come back interleaved on a single stream, so each
response is matched to its waiting caller by id.
"""

from __future__ import annotations

import asyncio
import logging

from broker.proxy.upstream.background import BackgroundTasks
from broker.proxy.upstream.base import (
    JsonObject,
    NotificationHandler,
    UpstreamLost,
    UpstreamUnavailable,
)
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.jsonrpc import (
    NotificationRouter,
    answer_server_request,
    answer_within,
    cancellation_message,
    notification_message,
    request_message,
    result_of,
)

logger = logging.getLogger(__name__)


class MultiplexedConnection:
    """The transport-independent half; subclasses move bytes and call `_receive` / `_lose`."""

    def __init__(self, server: str, on_notification: NotificationHandler) -> None:
        self.server = server
        self._router = NotificationRouter(server, on_notification)
        self._pending: dict[object, asyncio.Future[JsonObject]] = {}
        self._last_id = 0
        self._closed = asyncio.Event()
        self._close_reason: str | None = None
        self._background = BackgroundTasks(f"upstream '{server}'")

    @property
    def close_reason(self) -> str | None:
        """Why the connection ended, once it has."""
        return self._close_reason

    async def _send(self, message: JsonObject, caller: UpstreamCaller | None = None) -> None:
        """Deliver one message (a request made for `caller`, if any); raise `UpstreamUnavailable` when
        it was not delivered, `UpstreamLost` when it may have been (written, then the connection broke)."""
        raise NotImplementedError

    def _send_soon(self, message: JsonObject) -> None:
        """Deliver one message without waiting; best effort, failures are only logged."""
        raise NotImplementedError

    async def request(
        self,
        method: str,
        params: JsonObject | None,
        *,
        on_notification: NotificationHandler | None = None,
        timeout: float | None = None,
        caller: UpstreamCaller | None = None,
    ) -> JsonObject:
        if self._close_reason is not None:
            raise UpstreamUnavailable(self.server, self._close_reason)
        self._last_id = request_id = self._last_id + 1
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        token = None if on_notification is None else self._router.watch_progress(params, on_notification)

        async def sent_and_answered() -> JsonObject:
            await self._send(request_message(request_id, method, params), caller)
            return await future

        try:
            response = await answer_within(
                self.server,
                method,
                timeout,
                sent_and_answered(),
                lambda reason: self._abandon(request_id, method, reason),
            )
        finally:
            del self._pending[request_id]
            if token is not None:
                self._router.unwatch(token)
        return result_of(self.server, response)

    async def notify(self, method: str, params: JsonObject | None = None) -> None:
        if self._close_reason is not None:
            raise UpstreamUnavailable(self.server, self._close_reason)
        await self._send(notification_message(method, params))

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _abandon(self, request_id: int, method: str, reason: str) -> None:
        # The spec forbids cancelling initialize; a failed handshake closes the connection anyway.
        if self._close_reason is None and method != "initialize":
            self._send_soon(cancellation_message(request_id, reason))

    async def _receive(self, message: object) -> None:
        """Handle one message read from the server."""
        if type(message) is not dict:
            if type(message) is list:  # a JSON-RPC batch, allowed by protocol 2025-03-26
                for item in message:
                    await self._receive(item)
            else:
                logger.warning("upstream '%s': ignoring a message that is not a JSON object", self.server)
            return
        method = message.get("method")
        if method is None:
            future = self._pending.get(message.get("id"))
            if future is None:
                logger.debug("upstream '%s': response to unknown request %r", self.server, message.get("id"))
            elif not future.done():
                future.set_result(message)
        elif "id" in message:
            self._send_soon(answer_server_request(message))
        else:
            await self._router.route(message)

    def _lose(self, reason: str, *, expected: bool = False) -> None:
        """The connection is gone: fail every waiting caller and wake `wait_closed`.

        A caller still waiting has sent its request (`request` sends before it waits), so the
        server may have acted on it: `UpstreamLost`."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        if not expected:
            logger.warning("upstream '%s': %s", self.server, reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(UpstreamLost(self.server, reason))
        self._closed.set()
