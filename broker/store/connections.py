"""How the approval store reaches its database: shielded connections, this process's queue of
SQLite writers, failures mapped to StoreUnavailable and told to listeners, and the health probe.

Database work is shielded from the caller's cancellation: a driver call abandoned
halfway strands its connection (with aiosqlite it can keep SQLite's write lock
until every other writer times out), so an operation always runs to its end and
the caller sees its cancellation right after. Every driver call is bounded by the
engine's timeouts (see broker.store.database), so a shielded operation cannot hang.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.approvals.ports import StoreUnavailable
from broker.store.database import writing
from broker.store.failures import store_unavailable_on_db_error
from broker.store.probe import open_sqlite_afresh


class Connections:
    """Reading connections and writing transactions on one engine, for broker.store.sql."""

    def __init__(self, engine: AsyncEngine, *, db_timeout: float) -> None:
        self._engine = engine
        self._writer = writing(engine)
        self.postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time, and a connection that finds the write lock taken
        # waits in SQLite's busy handler, which sleeps up to 100 ms between tries. Queueing this
        # process's writers here instead hands the lock over as soon as it is free.
        self._local_writers = anyio.Lock() if not self.postgres else None
        self._failure_listeners: list[Callable[[str], None]] = []
        self._sqlite_path = engine.url.database or ""
        self._db_timeout = db_timeout

    @asynccontextmanager
    async def reading(self, operation: str) -> AsyncIterator[AsyncConnection]:
        with self._reported(), store_unavailable_on_db_error(operation), anyio.CancelScope(shield=True):
            async with self._engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def writing(self, operation: str) -> AsyncIterator[AsyncConnection]:
        with self._reported(), store_unavailable_on_db_error(operation):
            # Waiting for this process's turn may be cancelled; the transaction itself may not.
            async with self._local_writers or nullcontext():
                with anyio.CancelScope(shield=True):
                    async with self._writer.begin() as conn:
                        yield conn

    @contextmanager
    def _reported(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable as error:
            for listener in self._failure_listeners:
                listener(str(error))
            raise

    def report_failures_to(self, listener: Callable[[str], None]) -> None:
        """`listener` hears every StoreUnavailable this store raises, as it is raised (see
        broker.approvals.health); it must not block."""
        self._failure_listeners.append(listener)

    async def probe(self) -> None:
        """One round trip proving the database answers; raises StoreUnavailable when it does not.

        PostgreSQL: ``SELECT 1`` on a pooled connection (the pool's pre-ping replaces a dead one).
        SQLite: the file is opened afresh at its path and its schema version read, because pooled
        connections keep working on a file that was moved, deleted or replaced, and would go on
        writing approvals into a file nobody will find again.
        """
        if self.postgres:
            async with self.reading("probe the database") as conn:
                await conn.execute(text("SELECT 1"))
            return
        with self._reported():
            await open_sqlite_afresh(self._sqlite_path, timeout=self._db_timeout)
