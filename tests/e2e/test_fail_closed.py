"""Fail closed: when the approval store becomes unreachable, no call goes through until it is back,
and a broker whose database is not at its schema is not ready."""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url

from broker.store.database import build_engine
from tests.e2e.harness import exchange_server, make_settings, running_broker
from tests.store.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.anyio

POLICY = '{"version": "1", "default": "allow"}'


@pytest.fixture
async def postgres_database() -> AsyncIterator[str]:
    name = f"test_failclosed_{secrets.token_hex(4)}"
    admin = build_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.dispose()


async def set_reachable(name: str, reachable: bool) -> None:
    admin = build_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(reachable).lower()}')
            if not reachable:
                await conn.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                )
    finally:
        await admin.dispose()


@pytest.mark.postgres
async def test_an_unreachable_store_stops_every_call_until_it_returns(
    tmp_path: Path, postgres_database: str
) -> None:
    url = make_url(POSTGRES_ADMIN_URL).set(database=postgres_database).render_as_string(hide_password=False)
    settings = replace(make_settings(tmp_path, POLICY, exchange_server()), database_url=url)
    async with running_broker(settings) as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                assert not (await client.call_tool("get_balances", {})).is_error
                await set_reachable(postgres_database, False)
                await running.broker.approvals.wait_for_store(available=False)
                refused = await client.call_tool("get_balances", {})
                assert refused.is_error
                assert "cannot reach its approval store" in refused.content[0].text  # type: ignore[union-attr]
                async with running.raw(agent=None) as http:
                    assert (await http.get("/readyz")).status_code == 503
                await set_reachable(postgres_database, True)
                await running.broker.approvals.wait_for_store(available=True)
                assert not (await client.call_tool("get_balances", {})).is_error


async def test_readiness_follows_the_schema_revision_without_a_log_line_per_probe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, POLICY, exchange_server())
    database = make_url(settings.database_url).database
    assert database is not None
    async with running_broker(settings) as running, running.raw(agent=None) as http:
        with anyio.fail_after(30):
            caplog.clear()
            with caplog.at_level(logging.INFO):
                for _ in range(3):
                    assert (await http.get("/readyz")).status_code == 200
            assert not [record for record in caplog.records if record.name.startswith("alembic")]

            with sqlite3.connect(database) as db:
                (head,) = db.execute("SELECT version_num FROM broker_alembic_version").fetchone()
                db.execute("UPDATE broker_alembic_version SET version_num = '0001'")
            behind = await http.get("/readyz")
            assert behind.status_code == 503 and "newest migration" in behind.json()["store"]
            with sqlite3.connect(database) as db:
                db.execute("UPDATE broker_alembic_version SET version_num = ?", (head,))
            assert (await http.get("/readyz")).status_code == 200
