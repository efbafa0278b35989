"""Running the schema migrations from code (no alembic.ini): at startup, in tests, and for readiness.

Upgrades are safe to run from several processes at once: the whole upgrade is one
transaction, serialized by an advisory lock on PostgreSQL and by the write lock
(BEGIN IMMEDIATE) on SQLite, so the second process finds the schema at head and
does nothing.
"""

from __future__ import annotations

import functools
import hashlib
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from broker.store.database import DEFAULT_TIMEOUT, build_engine, database_url, writing
from broker.store.failures import store_unavailable_on_db_error

VERSION_TABLE = "broker_alembic_version"
"""Alembic's bookkeeping table, named so it cannot collide with another application's in a shared database."""

MIGRATION_LOCK = int.from_bytes(
    hashlib.sha256(b"mcp-approval-broker/migrations").digest()[:8], "big", signed=True
)
"""PostgreSQL advisory lock key held for the duration of an upgrade."""


MIGRATION_WAIT = 60.0
MIGRATION_STATEMENT_TIMEOUT = 3600.0


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config for the shipped `migrations` package, optionally bound to `url`."""
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    if url is not None:
        rendered = database_url(url).render_as_string(hide_password=False)
        # ConfigParser interpolation would eat a literal % in a password.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest migration shipped with this code (read once: readiness probes ask often)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(
    url: str | URL,
    *,
    revision: str = "head",
    db_timeout: float = MIGRATION_WAIT,
    statement_timeout: float = MIGRATION_STATEMENT_TIMEOUT,
) -> None:
    """Bring the schema at `url` up to `revision`; a no-op when it is already there.

    The timeouts are generous because replicas starting together queue behind the
    first one's upgrade (`db_timeout` bounds connecting and, on SQLite, that wait)
    and a migration may rewrite a large table (`statement_timeout`, PostgreSQL).
    """
    config = alembic_config()
    engine = build_engine(url, db_timeout=db_timeout, statement_timeout=statement_timeout)
    try:
        with store_unavailable_on_db_error("schema upgrade"):
            async with writing(engine).begin() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                await conn.run_sync(_run_upgrade, config, revision)
    finally:
        await engine.dispose()


async def current_revision(url: str | URL, *, db_timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """The revision the database at `url` is at, or None when it was never migrated."""
    engine = build_engine(url, db_timeout=db_timeout)
    try:
        with store_unavailable_on_db_error("reading the schema revision"):
            async with engine.connect() as conn:
                return await conn.run_sync(_read_revision)
    finally:
        await engine.dispose()


def _run_upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _read_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()
