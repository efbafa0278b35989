"""Alembic environment for the approval store.

`broker.store.migrate` passes an open connection in ``config.attributes["connection"]``
and owns the transaction around it. Without one (the alembic command line with a
Config carrying ``sqlalchemy.url``), this opens its own engine; offline mode
renders the DDL as SQL for review.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from broker.store.database import build_engine, writing
from broker.store.migrate import VERSION_TABLE
from broker.store.tables import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        # SQLite can only ALTER by copying tables; batch mode makes autogenerate say so.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def _configured_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database: run migrations through broker.store.migrate.upgrade(url) "
            "or set sqlalchemy.url on the Alembic Config"
        )
    return url


async def _run_with_own_engine(url: str) -> None:
    engine = build_engine(url)
    try:
        async with writing(engine).begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=_configured_url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        _run_offline()
        return
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(_run_with_own_engine(_configured_url()))
    else:
        _run(connection)


_main()
