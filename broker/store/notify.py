"""Approval changes between broker replicas on one PostgreSQL database: LISTEN/NOTIFY.

Every replica keeps one connection of its own for this (asyncpg, outside the store's pool:
a pooled connection handed back would lose its LISTEN). A change this replica wins in the
store is announced on the channel right after its transaction commits; a change another
replica announces wakes the agents waiting on it here at once, instead of at the next
sweep, and an approval wakes this replica's release path too when one of its agents
waits on it.

Notifications are a shortcut, never the only way news travels. PostgreSQL drops them for
a listener that is not connected, so one lost while the connection is down only delays an
agent until the sweeper's next pass (`ApprovalService.sweep` re-reads every watched
approval); after a reconnect every local waiter re-reads its approval at once. The
connection is re-opened with exponential backoff.

The connection is also the fastest sign of an outage: PostgreSQL closes it the moment the
server stops or the backend is terminated, and `on_lost` is told at once (the broker marks
its store down, see broker.approvals.health), before any other operation could fail.

Exception tree: none of its own. Failures of the connection are logged and retried;
`ApprovalChange.parse` raises ValueError on a payload it cannot read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import asyncpg
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy.engine import URL

from broker.approvals.model import Approval, ApprovalStatus
from broker.store.database import Backend, backend_of, database_url

logger = logging.getLogger(__name__)

CHANNEL = "broker_approvals"
MAX_BATCH = 500
"""Notifications sent in one statement when changes pile up (pg_notify keeps their order)."""

_NOTIFY_BATCH = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload"


def asyncpg_dsn(url: str | URL) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes for a broker database URL (PostgreSQL only)."""
    parsed = database_url(url)
    if backend_of(parsed) is not Backend.POSTGRESQL:
        raise ValueError(f"{parsed.render_as_string(hide_password=True)} is not a PostgreSQL URL")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True, slots=True)
class ApprovalChange:
    """One notification: approval `approval_id` is now `status`, as `replica` committed it."""

    approval_id: str
    status: ApprovalStatus
    replica: str

    def payload(self) -> str:
        return orjson.dumps(
            {"id": self.approval_id, "status": self.status.value, "replica": self.replica}
        ).decode()

    @classmethod
    def parse(cls, payload: str) -> ApprovalChange:
        try:
            fields = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"approval notification is not JSON: {payload[:200]!r}") from exc
        if not isinstance(fields, dict):
            raise ValueError(f"approval notification is not an object: {payload[:200]!r}")
        approval_id, status, replica = fields.get("id"), fields.get("status"), fields.get("replica")
        if not isinstance(approval_id, str) or not approval_id or not isinstance(replica, str):
            raise ValueError(f"approval notification lacks id or replica: {payload[:200]!r}")
        try:
            return cls(approval_id, ApprovalStatus(str(status)), replica)
        except ValueError as exc:
            raise ValueError(f"approval notification has an unknown status {status!r}") from exc


class ChangeSink(Protocol):
    """What the feed tells about other replicas' changes (implemented by ApprovalService)."""

    def notice_external_change(self, approval_id: str, *, status: ApprovalStatus | None = None) -> None: ...

    def notice_external_changes(self) -> None: ...


class ReplicaFeed:
    """Announces this replica's approval changes and hears the others'. An ApprovalListener.

    Add it to the service with `add_listener`, and keep `run(service)` running for as long as
    the service runs.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        replica: str,
        channel: str = CHANNEL,
        connect_timeout: float = 5.0,
        keepalive: float = 10.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        outbox_size: int = 10_000,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        if not channel.isidentifier():
            raise ValueError(f"channel must be a plain SQL identifier, got {channel!r}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first, most) with 0 < first <= most, got {backoff!r}")
        self._dsn = asyncpg_dsn(url)
        self.replica = replica
        self.channel = channel
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._backoff = backoff
        self._sleep = sleep
        self._on_lost = on_lost
        self._outbox: MemoryObjectSendStream[str]
        self._pending: MemoryObjectReceiveStream[str]
        self._outbox, self._pending = anyio.create_memory_object_stream[str](outbox_size)
        self._dropped = 0
        self.connections = 0
        """How many times the feed connection was opened (a reconnect counts again)."""
        self.connected = False
        self._connection_changed = anyio.Event()

    # -- ApprovalListener: what this replica won goes out ------------------------------------------

    async def approval_opened(self, approval: Approval) -> None:
        self._post(approval)

    async def approval_updated(self, approval: Approval) -> None:
        self._post(approval)

    def _post(self, approval: Approval) -> None:
        try:
            self._outbox.send_nowait(ApprovalChange(approval.id, approval.status, self.replica).payload())
        except anyio.WouldBlock:
            # The sweeper still carries the news; only its speed is lost.
            self._dropped += 1
            if self._dropped == 1 or math.log2(self._dropped).is_integer():
                logger.warning("replica notification outbox full: %d changes announced late", self._dropped)

    # -- the connection -------------------------------------------------------------------------------

    async def wait_connected(self, connected: bool = True) -> None:
        """Returns once the feed is (or is no longer) listening."""
        while self.connected is not connected:
            await self._connection_changed.wait()

    async def run(self, sink: ChangeSink) -> None:
        """Listens and announces until cancelled, reconnecting with exponential backoff."""
        first, most = self._backoff
        delay = first
        while True:
            try:
                await self._session(sink)
            except Exception as exc:
                # Any failure of this connection costs speed only: the sweeper keeps every replica right.
                level = logging.WARNING if delay == first else logging.DEBUG
                logger.log(level, "replica notifications interrupted (retrying in %.1f s): %s", delay, exc)
                if self.connected:
                    self._lost(f"the notification connection failed: {exc}")
            if self.connected:
                delay = first  # it worked for a while: start the backoff over
            self._set_connected(False)
            await self._sleep(delay)
            delay = min(delay * 2, most)

    async def _session(self, sink: ChangeSink) -> None:
        connection = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": f"broker-feed {self.replica}"[:63]},
        )
        lost = anyio.Event()

        def on_termination(_connection: Any) -> None:
            # Called by asyncpg as the socket closes, before any task here notices.
            lost.set()
            self._lost("the server closed the notification connection")

        def on_notification(_connection: Any, _pid: int, _channel: str, payload: object) -> None:
            self._received(sink, str(payload))

        try:
            connection.add_termination_listener(on_termination)
            await connection.add_listener(self.channel, on_notification)
            self.connections += 1
            self._set_connected(True)
            # Whatever was announced while nobody here was listening: every waiter re-reads.
            sink.notice_external_changes()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._announce_forever, connection)
                await lost.wait()
                tasks.cancel_scope.cancel()
            raise ConnectionError("the notification connection was closed")
        finally:
            # Closing it ourselves (shutdown, a failed keepalive) is no news about the server.
            connection.remove_termination_listener(on_termination)
            connection.terminate()

    async def _announce_forever(self, connection: asyncpg.Connection) -> None:
        while True:
            batch: list[str] = []
            with anyio.move_on_after(self._keepalive):
                batch.append(await self._pending.receive())
            while batch and len(batch) < MAX_BATCH:
                try:
                    batch.append(self._pending.receive_nowait())
                except anyio.WouldBlock:
                    break
            timeout = self._connect_timeout
            if batch:
                await connection.execute(_NOTIFY_BATCH, self.channel, batch, timeout=timeout)
            else:
                # Idle: a dead peer shows itself only when something is sent.
                await connection.execute("SELECT 1", timeout=timeout)

    def _lost(self, reason: str) -> None:
        if self._on_lost is not None:
            self._on_lost(reason)

    def _received(self, sink: ChangeSink, payload: str) -> None:
        try:
            change = ApprovalChange.parse(payload)
        except ValueError as exc:
            logger.warning("ignoring a notification on %s: %s", self.channel, exc)
            return
        if change.replica == self.replica:
            return
        sink.notice_external_change(change.approval_id, status=change.status)

    def _set_connected(self, connected: bool) -> None:
        if connected is not self.connected:
            self.connected = connected
            self._connection_changed.set()
            self._connection_changed = anyio.Event()
