"""Turning a database URL into a configured async engine.

SQLite notes: the file is opened in WAL mode with a busy timeout and foreign keys
on, and SQLAlchemy (not the sqlite3 module) emits BEGIN. Write transactions use
``BEGIN IMMEDIATE`` so they take the single write lock before reading anything:
a compare-and-set then cannot interleave with another connection or process, and
no write fails later with SQLITE_BUSY_SNAPSHOT after having read stale rows.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

WRITE_TRANSACTION = "approval_store_write"
"""Execution option marking an engine whose transactions write (SQLite: BEGIN IMMEDIATE)."""

DEFAULT_TIMEOUT = 5.0
DEFAULT_STATEMENT_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 10


class Backend(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


_ASYNC_DRIVERS = {Backend.SQLITE: "sqlite+aiosqlite", Backend.POSTGRESQL: "postgresql+asyncpg"}
_PLAIN_SCHEMES = {
    "sqlite": Backend.SQLITE,
    "sqlite+aiosqlite": Backend.SQLITE,
    "postgresql": Backend.POSTGRESQL,
    "postgres": Backend.POSTGRESQL,
    "postgresql+asyncpg": Backend.POSTGRESQL,
}


def database_url(url: str | URL) -> URL:
    """Parse `url` and point it at the async driver this store uses.

    ``sqlite:///path.db`` becomes ``sqlite+aiosqlite:///path.db`` and ``postgresql://``
    (or ``postgres://``) becomes ``postgresql+asyncpg://``. Other drivers are refused
    rather than silently swapped.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {url!r}") from exc
    backend = _PLAIN_SCHEMES.get(parsed.drivername)
    if backend is None:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///path.db or postgresql://..."
        )
    if backend is Backend.SQLITE and parsed.database in (None, "", ":memory:"):
        raise ValueError("an in-memory SQLite database cannot be shared by the broker; give a file path")
    return parsed.set(drivername=_ASYNC_DRIVERS[backend])


def backend_of(url: str | URL) -> Backend:
    return Backend.SQLITE if database_url(url).get_backend_name() == "sqlite" else Backend.POSTGRESQL


def build_engine(
    url: str | URL,
    *,
    db_timeout: float = DEFAULT_TIMEOUT,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncEngine:
    """An async engine for `url`; past any of its timeouts an operation fails with StoreUnavailable.

    `db_timeout` (seconds) bounds connecting and, on SQLite, waiting for the write
    lock. `statement_timeout` bounds each PostgreSQL statement, lock waits included
    (SQLite statements only ever wait for the write lock). `max_connections` caps
    this engine's pool, i.e. what one broker replica may hold open.
    """
    for name, value in (("db_timeout", db_timeout), ("statement_timeout", statement_timeout)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    parsed = database_url(url)
    pool = {"pool_size": max_connections, "max_overflow": 0}
    if backend_of(parsed) is Backend.POSTGRESQL:
        return create_async_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={"timeout": db_timeout, "command_timeout": statement_timeout},
            **pool,
        )
    engine = create_async_engine(parsed, **pool)
    _configure_sqlite(engine, busy_timeout_ms=int(db_timeout * 1000))
    return engine


def writing(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) with transactions that take the write lock up front."""
    return engine.execution_options(**{WRITE_TRANSACTION: True})


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Stop the sqlite3 module from issuing its own BEGINs; on_begin below does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            _enable_wal(cursor, within=busy_timeout_ms / 1000)
            # synchronous stays FULL: the approved -> released mark must be on disk before the call
            # goes upstream, or a power cut could let a restarted broker release it a second time.
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_TRANSACTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    event.listen(engine.sync_engine, "connect", on_connect)
    event.listen(engine.sync_engine, "begin", on_begin)


def _enable_wal(cursor: Any, *, within: float) -> None:
    # Switching a new file to WAL needs its exclusive lock, and SQLite answers "database is
    # locked" at once instead of waiting for it (the busy timeout does not apply), e.g. when
    # several replicas open a fresh database together. This runs in the driver's own thread.
    deadline = time.monotonic() + within
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
