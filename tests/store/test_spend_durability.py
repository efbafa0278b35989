"""`spend.durable` reaches the PostgreSQL spend ledger's connections: `synchronous_commit = off`
by default, the server's own setting (a WAL flush per commit) when durable; refused with Redis."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from broker.config.errors import ConfigError
from broker.config.settings import load_settings
from broker.store.engine import create_store
from broker.store.notify import asyncpg_dsn
from broker.store.pg_spend import PostgresSpendLedger
from broker.wiring.store import spend_ledger_for
from tests.config.test_agents_and_approvers import write_config
from tests.store.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.anyio


@pytest.mark.postgres
@pytest.mark.parametrize("section", ["", "spend: {durable: false}\n", "spend: {durable: true}\n"])
async def test_the_setting_reaches_the_ledgers_connections(tmp_path: Path, section: str) -> None:
    path = write_config(tmp_path, f"database_url: {POSTGRES_ADMIN_URL}\n{section}")
    settings = load_settings(path, environ={})
    store = create_store(settings.database_url)
    try:
        ledger = spend_ledger_for(settings, store)
        assert isinstance(ledger, PostgresSpendLedger)
        with anyio.fail_after(20):
            plain = await asyncpg.connect(asyncpg_dsn(settings.database_url))
            try:
                server_default = await plain.fetchval("SHOW synchronous_commit")
            finally:
                await plain.close()
            async with ledger:
                seen = await ledger._live().fetchval("SHOW synchronous_commit")
    finally:
        await store.close()
    assert server_default != "off"  # else durable could not be told apart from the default
    assert seen == (server_default if "true" in section else "off")


def test_durable_is_refused_when_the_ledger_is_in_redis(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "rate_limits: {backend: redis, redis_url: 'redis://127.0.0.1:6379/0'}\nspend: {durable: true}\n",
    )
    with pytest.raises(ConfigError, match=r"spend\.durable: the spend ledger is in Redis"):
        load_settings(path, environ={})
    path = write_config(tmp_path, "spend: {durabel: true}\n")
    with pytest.raises(
        ConfigError, match=r":3:9: spend\.durabel: unknown key 'durabel'; did you mean 'durable'\?"
    ):
        load_settings(path, environ={})
