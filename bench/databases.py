"""A throwaway PostgreSQL database per benchmark run, so no run counts another run's approvals."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url

from broker.store.database import build_engine

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def fresh_postgres_database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """Creates an empty database next to `admin_url`'s, yields its URL, drops it afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = build_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.dispose()
