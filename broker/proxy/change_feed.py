"""Fan-out of server-initiated notifications (tools/list_changed) to every open agent stream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

Notification = dict[str, Any]


class ChangeFeed:
    def __init__(self, *, queue_size: int = 64) -> None:
        self._subscribers: set[asyncio.Queue[Notification]] = set()
        self._queue_size = queue_size
        self._subscribed = asyncio.Event()

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Notification]]:
        queue: asyncio.Queue[Notification] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        self._subscribed.set()
        self._subscribed = asyncio.Event()
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def publish(self, notification: Notification) -> None:
        for queue in self._subscribers:
            if queue.full():
                # A subscriber that stopped reading only needs to learn that something
                # changed; list_changed carries no payload, so older copies are redundant.
                continue
            queue.put_nowait(notification)

    async def wait_for_subscriber(self) -> None:
        """Returns after the next stream subscribes (lets tests and shutdown wait without polling)."""
        await self._subscribed.wait()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
