"""`SeenRequests` on the approval store's database: the ``seen_requests`` table (migration 0003).

`first_seen` is one writing transaction on the store's engine (`SqlApprovalStore.transaction`):

1. purge: delete at most `PURGE_BATCH` rows whose ``expires_at`` has passed, oldest first. Each
   accepted request adds one row and removes up to `PURGE_BATCH` dead ones, so the table never
   holds much more than the requests of one validity window, with no sweeper to run. On
   PostgreSQL the rows to delete are picked ``FOR UPDATE SKIP LOCKED``: replicas purging at the
   same moment take different rows instead of waiting on (or deadlocking over) each other's.
2. ``INSERT .. ON CONFLICT (digest) DO NOTHING RETURNING digest``: the primary key decides, so of
   any number of concurrent callers on any number of replicas exactly one gets the row back.

A digest still present after its expiry (not purged yet) counts as seen: a request that old no
longer passes its signature's time check anyway.

Failures: StoreUnavailable (unreachable, timed out, refused), as everywhere in broker.store.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.clock import Clock, require_utc
from broker.store.sql import SqlApprovalStore
from broker.store.tables import seen_requests

PURGE_BATCH = 100
MAX_DIGEST_LENGTH = 64

Transaction = Callable[[str], AbstractAsyncContextManager[AsyncConnection]]


class SqlSeenRequests:
    """SeenRequests (broker.approvals.ports) in the store's database, shared by every replica on it."""

    def __init__(self, transaction: Transaction, *, clock: Clock, purge_batch: int = PURGE_BATCH) -> None:
        if purge_batch < 1:
            raise ValueError(f"purge_batch must be at least 1, got {purge_batch}")
        self._transaction = transaction
        self._clock = clock
        self._purge_batch = purge_batch

    @classmethod
    def on(cls, store: SqlApprovalStore, *, clock: Clock, purge_batch: int = PURGE_BATCH) -> SqlSeenRequests:
        """Seen requests kept through `store`'s engine (its pool, its failure mapping)."""
        return cls(store.transaction, clock=clock, purge_batch=purge_batch)

    async def first_seen(self, digest: str, expires_at: datetime) -> bool:
        if not digest or len(digest) > MAX_DIGEST_LENGTH or not digest.isascii() or not digest.isprintable():
            raise ValueError(f"a seen-request digest is 1 to {MAX_DIGEST_LENGTH} printable ASCII characters")
        expires_at = require_utc(expires_at, field="expires_at")
        now = require_utc(self._clock(), field="clock()")
        async with self._transaction("record a seen request") as conn:
            await self._purge(conn, now)
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            inserted = await conn.execute(
                dialect.insert(seen_requests)
                .values(digest=digest, expires_at=expires_at)
                .on_conflict_do_nothing(index_elements=[seen_requests.c.digest])
                .returning(seen_requests.c.digest)
            )
            return inserted.first() is not None

    async def _purge(self, conn: AsyncConnection, now: datetime) -> None:
        expired = (
            select(seen_requests.c.digest)
            .where(seen_requests.c.expires_at < now)
            .order_by(seen_requests.c.expires_at)
            .limit(self._purge_batch)
        )
        if conn.dialect.name == "postgresql":
            expired = expired.with_for_update(skip_locked=True)
        await conn.execute(delete(seen_requests).where(seen_requests.c.digest.in_(expired)))
