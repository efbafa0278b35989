"""Schema migrations: idempotent, safe to run concurrently, and identical to the SQLModel tables."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from broker.store.database import build_engine
from broker.store.engine import create_store
from broker.store.migrate import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from broker.store.tables import metadata

from .builders import create
from .conftest import ManualClock, SequentialIds

pytestmark = pytest.mark.anyio


def _approval_store_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Limit the comparison to this store's tables; later migrations may add other components' tables."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table in metadata.tables


async def schema_differences(url: str) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": VERSION_TABLE,
                "compare_type": True,
                "include_object": _approval_store_object,
            },
        )
        return list(compare_metadata(context, metadata))

    engine = build_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    engine = build_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_fresh_database_is_not_at_head(database_url: str) -> None:
    assert head_revision() is not None
    assert await current_revision(database_url) is None
    assert await current_revision(database_url) != head_revision()


async def test_upgrade_reaches_head_and_twice_is_a_no_op(
    database_url: str, clock: ManualClock, ids: SequentialIds
) -> None:
    await upgrade(database_url)
    assert await current_revision(database_url) == head_revision()
    assert await current_revision(database_url) == head_revision()
    async with create_store(database_url, clock=clock, id_factory=ids) as store:
        approval = await create(store)

    await upgrade(database_url)

    assert await current_revision(database_url) == head_revision()
    async with create_store(database_url, clock=clock, id_factory=ids) as store:
        assert await store.get(approval.id) == approval
        assert (await store.verify_audit_chain()).rows_checked == 1


async def test_revision_0001_alone_creates_the_approval_store(database_url: str) -> None:
    await upgrade(database_url, revision="0001")

    assert await current_revision(database_url) == "0001"
    assert await table_names(database_url) == {"approvals", "audit_events", VERSION_TABLE}


async def test_migrated_schema_equals_the_sqlmodel_tables(database_url: str) -> None:
    await upgrade(database_url)

    assert await schema_differences(database_url) == []
    assert {"approvals", "audit_events", VERSION_TABLE} <= await table_names(database_url)


async def test_concurrent_upgrades_do_not_collide(database_url: str) -> None:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(upgrade, database_url)

    assert await current_revision(database_url) == head_revision()
    assert await schema_differences(database_url) == []


async def test_downgrade_then_upgrade_again(database_url: str) -> None:
    """Drives the alembic command with a URL (env.py opening its own engine), as an operator would."""
    await upgrade(database_url)

    await anyio.to_thread.run_sync(command.downgrade, alembic_config(database_url), "base")
    assert await current_revision(database_url) is None
    assert not {"approvals", "audit_events"} & await table_names(database_url)

    await anyio.to_thread.run_sync(command.upgrade, alembic_config(database_url), "head")
    assert await current_revision(database_url) == head_revision()
    assert await schema_differences(database_url) == []


def test_offline_sql_renders_the_ddl(capsys: pytest.CaptureFixture[str]) -> None:
    command.upgrade(alembic_config("postgresql://reviewer@localhost/approvals"), "head", sql=True)

    rendered = capsys.readouterr().out
    assert "CREATE TABLE approvals" in rendered
    assert "CREATE TABLE audit_events" in rendered
    assert "CREATE UNIQUE INDEX ix_approvals_task_id" in rendered
    assert f"CREATE TABLE {VERSION_TABLE}" in rendered
