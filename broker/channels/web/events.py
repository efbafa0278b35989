"""Live inbox updates: every approval change in this process, fanned out to open browsers over SSE.

Each browser gets a small bounded queue. A browser too slow to drain it is not allowed to hold
memory or slow anybody else down: its stream is ended, its EventSource reconnects on its own,
and the page re-reads the inbox on every (re)connect, so nothing is lost but a little latency.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from broker.approvals.model import Approval

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
QUEUE_SIZE = 64
RETRY_MILLISECONDS = 2000


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def approval_event(kind: str, approval: Approval) -> dict[str, Any]:
    """What a browser is told; the page fetches anything else it needs with its own credentials."""
    return {
        "kind": kind,
        "id": approval.id,
        "status": approval.status.value,
        "agent": approval.agent,
        "tool": approval.tool,
        "decided_by": approval.decided_by,
        "decided_via": approval.decided_via,
        "decided_at": _iso(approval.decided_at),
    }


class _Subscriber:
    def __init__(self, size: int) -> None:
        self.send: MemoryObjectSendStream[bytes]
        self.receive: MemoryObjectReceiveStream[bytes]
        self.send, self.receive = anyio.create_memory_object_stream[bytes](size)


class InboxEvents:
    """The `ApprovalListener` behind ``GET /events``."""

    def __init__(self, *, keepalive_seconds: float = KEEPALIVE_SECONDS, queue_size: int = QUEUE_SIZE) -> None:
        self.keepalive_seconds = keepalive_seconds
        self._queue_size = queue_size
        self._subscribers: set[_Subscriber] = set()
        self._changed = anyio.Event()

    # -- ApprovalListener -----------------------------------------------------------------------

    async def approval_opened(self, approval: Approval) -> None:
        self.publish(approval_event("opened", approval))

    async def approval_updated(self, approval: Approval) -> None:
        self.publish(approval_event("updated", approval))

    # -- fan-out ----------------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        frame = f"event: approval\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
        for subscriber in list(self._subscribers):
            try:
                subscriber.send.send_nowait(frame)
            except anyio.WouldBlock:
                logger.warning(
                    "a browser fell %d events behind; ending its stream so it resyncs", self._queue_size
                )
                self._drop(subscriber)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def wait_for_subscribers(self, count: int) -> None:
        """Returns once exactly `count` browsers are connected (bound the wait with a timeout)."""
        while len(self._subscribers) != count:
            await self._changed.wait()

    def close(self) -> None:
        """Ends every stream (shutdown); browsers reconnect to whichever broker serves them next."""
        for subscriber in list(self._subscribers):
            self._drop(subscriber)

    @contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[bytes]]:
        subscriber = _Subscriber(self._queue_size)
        self._subscribers.add(subscriber)
        self._notify()
        try:
            yield subscriber.receive
        finally:
            self._drop(subscriber)
            subscriber.receive.close()

    def _drop(self, subscriber: _Subscriber) -> None:
        subscriber.send.close()
        if subscriber in self._subscribers:
            self._subscribers.discard(subscriber)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def frames(self, receive: MemoryObjectReceiveStream[bytes]) -> AsyncIterator[bytes]:
        """Event frames as they come, a comment line whenever nothing came for a keepalive period."""
        yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
        while True:
            with anyio.move_on_after(self.keepalive_seconds):
                try:
                    frame = await receive.receive()
                except anyio.EndOfStream:
                    return
                yield frame
                continue
            # Proxies and load balancers cut connections that stay silent; a comment keeps it open.
            yield b": keepalive\n\n"


class EventStreamResponse(StreamingResponse):
    """Streams one subscription until the browser leaves or the hub ends it.

    The subscription starts before the response headers go out, so once the browser sees the
    stream open no later change can be missed.
    """

    def __init__(self, hub: InboxEvents) -> None:
        super().__init__(
            content=iter(()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._hub.subscribe() as subscription:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._watch_disconnect, receive, tasks.cancel_scope)
                await send(
                    {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
                )
                try:
                    async for frame in self._hub.frames(subscription):
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:
                    pass  # the browser went away mid-write; leaving the block drops the subscription
                tasks.cancel_scope.cancel()

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return
