"""A small asyncpg pool owned by a hot-path component (shared rate limits, the spend ledger), kept
apart from the store's SQLAlchemy engine so one statement costs one round trip and nothing more."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import asyncpg
from sqlalchemy.engine import URL

from broker.store.notify import asyncpg_dsn


async def _keep_session(connection: asyncpg.Connection) -> None:
    """No reset between uses: asyncpg's default (``RESET ALL``, ``UNLISTEN *``, unlocking advisory
    locks...) is one more round trip per statement, and these pools never leave session state
    behind (single statements, transaction-scoped locks, settings fixed at connect)."""


class OwnedPool:
    """Opens the pool on ``async with`` and closes it after; `_live` is the open pool."""

    def __init__(
        self, url: str | URL, *, pool_size: int, timeout: float, server_settings: dict[str, str] | None = None
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._dsn = asyncpg_dsn(url)
        self._pool_size = pool_size
        self._timeout = timeout
        self._server_settings = server_settings
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> Self:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            timeout=self._timeout,
            server_settings=self._server_settings,
            reset=_keep_session,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _live(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{type(self).__name__} is used outside its 'async with' block")
        return self._pool
