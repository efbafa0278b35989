"""Checking that a SQLite database is still where the broker expects it.

A pooled SQLite connection holds its file open: when the file is moved, deleted or replaced
(by a directory, by another file) every pooled connection keeps reading and writing the old
one, and approvals written then are lost with it. Only opening the path afresh notices, so
that is what the store's probe does (see `SqlApprovalStore.probe`). Running as root does not
change this, and neither do permissions removed from an open file.

Exception tree: raises `broker.approvals.ports.StoreUnavailable` for every failure.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import quote

import anyio

from broker.approvals.ports import StoreUnavailable
from broker.store.migrate import VERSION_TABLE


async def open_sqlite_afresh(path: str, *, timeout: float) -> None:
    """Open the file at `path` (never creating it) and read its schema version, in a worker thread;
    `timeout` bounds waiting for a lock."""
    await anyio.to_thread.run_sync(_open_and_read, path, timeout)


def _open_and_read(path: str, timeout: float) -> None:
    try:
        connection = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=timeout)
        try:
            connection.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise StoreUnavailable(f"cannot open the SQLite database {path}: {error}") from error
