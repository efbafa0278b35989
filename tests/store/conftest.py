"""Fixtures for the approval store contract: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from broker.store.database import build_engine
from broker.store.engine import create_store
from broker.store.migrate import upgrade
from broker.store.sql import SqlApprovalStore

POSTGRES_ADMIN_URL = os.environ.get("BROKER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class ManualClock:
    """A clock that only moves when the test says so."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


class SequentialIds:
    """Readable, ordered approval ids: apv-000001, apv-000002, ..."""

    def __init__(self, prefix: str = "apv") -> None:
        self._prefix = prefix
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return f"{self._prefix}-{self._next:06d}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2025, 3, 1, 9, 30, tzinfo=UTC))


@pytest.fixture
def ids() -> SequentialIds:
    return SequentialIds()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to an empty database of the parametrized backend (never migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'approvals.db'}"
        return
    name = f"test_store_{secrets.token_hex(6)}"
    admin = build_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    await upgrade(database_url)
    return database_url


@pytest.fixture
async def open_store(
    migrated_url: str, clock: ManualClock, ids: SequentialIds
) -> AsyncIterator[Callable[[], SqlApprovalStore]]:
    """Opens more stores on the same database, each with its own engine, like broker replicas."""
    opened: list[SqlApprovalStore] = []

    def open_one() -> SqlApprovalStore:
        # A small pool: races then also queue for connections, and parallel test runs stay
        # well inside PostgreSQL's max_connections.
        store = create_store(migrated_url, clock=clock, id_factory=ids, max_connections=4)
        opened.append(store)
        return store

    try:
        yield open_one
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
def store(open_store: Callable[[], SqlApprovalStore]) -> SqlApprovalStore:
    return open_store()


@pytest.fixture
def raw_sql(migrated_url: str) -> Callable[[str], Awaitable[None]]:
    """Runs one statement outside the store, as an operator (or an attacker) with database access would."""

    async def execute(statement: str) -> None:
        engine = build_engine(migrated_url)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(statement)
        finally:
            await engine.dispose()

    return execute
