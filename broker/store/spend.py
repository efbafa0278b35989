"""`SpendLedger` on the approval store's database: the ``spend_entries`` table (migration 0014).

Reserving is one writing transaction::

    PostgreSQL: SELECT pg_advisory_xact_lock(hashtextextended(counter, 0))  -- each, in order
    SELECT counter, sum(units), min(at) FROM spend_entries
     WHERE counter = :c AND at >= :since AND (lease_until IS NULL OR lease_until > :now)
    INSERT INTO spend_entries (reservation, counter, at, units, lease_until) ...  -- when all fit

Holding the counters' advisory locks, a transaction reads the totals and inserts before any other
reserver of those counters reads (READ COMMITTED: the next one's statements see this commit), so
50 calls racing for the last part of a budget on any number of replicas are serialised per
counter and never overspend. Locks are taken in a fixed order so two calls with overlapping
counters cannot deadlock. SQLite serialises every writer (BEGIN IMMEDIATE). Committing clears
``lease_until``; releasing deletes the reservation's rows. Rows older than `retention_seconds` are
pruned now and then by a reserving call.

One row per distinct counter of a reservation: limits sharing a counter must measure the same
thing (a count and a sum on one counter would mix units). Failures: StoreUnavailable, as
everywhere in broker.store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.spending import (
    DEFAULT_LEASE_SECONDS,
    Charge,
    Reservation,
    SpendRefusal,
    check_charges,
    first_refusal,
)
from broker.store.sql import SqlApprovalStore
from broker.store.tables import spend_entries

DEFAULT_RETENTION_SECONDS = 32 * 86_400.0
"""Longer than the longest window a policy may give (31 days)."""
PRUNE_INTERVAL_SECONDS = 60.0


LOCK_COUNTERS = """
SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
  FROM (SELECT DISTINCT c COLLATE "C" AS k FROM unnest(CAST(:counters AS text[])) AS c ORDER BY k) AS ordered
"""
"""Each counter's advisory lock, in one fixed order (the same as spend_reserve in broker.store.pg_spend)."""


class SqlSpendLedger:
    """SpendLedger (broker.approvals.spending) in the store's database, shared by every replica on it."""

    def __init__(
        self,
        store: SqlApprovalStore,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        if lease_seconds <= 0 or retention_seconds <= 0:
            raise ValueError("lease_seconds and retention_seconds must be positive")
        self._store = store
        self._lease = lease_seconds
        self._retention = retention_seconds
        self._next_prune = -math.inf

    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], now: float
    ) -> Reservation | SpendRefusal:
        check_charges(charges)
        async with self._store.transaction("reserve spend") as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text(LOCK_COUNTERS), {"counters": [charge.counter for charge in charges]})
            totals = await _totals(conn, charges, now)
            refusal = first_refusal(charges, totals)
            if refusal is not None:
                return refusal
            rows = {
                charge.counter: {
                    "reservation": reservation_id,
                    "counter": charge.counter,
                    "at": now,
                    "units": charge.units,
                    "lease_until": now + self._lease,
                }
                for charge in reversed(charges)
            }
            await conn.execute(spend_entries.insert(), list(rows.values()))
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_INTERVAL_SECONDS
                await conn.execute(delete(spend_entries).where(spend_entries.c.at < now - self._retention))
        return Reservation(reservation_id, tuple(charges), now)

    async def commit(self, reservation: Reservation) -> None:
        async with self._store.transaction("commit spend") as conn:
            done = await conn.execute(
                update(spend_entries)
                .where(spend_entries.c.reservation == reservation.id)
                .values(lease_until=None)
            )
            if done.rowcount == 0:
                # Pruned meanwhile (a call slower than the retention): the spend still happened.
                await _insert_committed(conn, reservation)

    async def release(self, reservation: Reservation) -> None:
        async with self._store.transaction("release spend") as conn:
            await conn.execute(delete(spend_entries).where(spend_entries.c.reservation == reservation.id))


async def _totals(
    conn: AsyncConnection, charges: Sequence[Charge], now: float
) -> dict[tuple[str, float], tuple[int, float | None]]:
    totals: dict[tuple[str, float], tuple[int, float | None]] = {}
    for counter, since in dict.fromkeys((charge.counter, charge.since) for charge in charges):
        row = (
            await conn.execute(
                select(func.coalesce(func.sum(spend_entries.c.units), 0), func.min(spend_entries.c.at)).where(
                    and_(
                        spend_entries.c.counter == counter,
                        spend_entries.c.at >= since,
                        or_(spend_entries.c.lease_until.is_(None), spend_entries.c.lease_until > now),
                    )
                )
            )
        ).one()
        totals[(counter, since)] = (int(row[0]), None if row[1] is None else float(row[1]))
    return totals


async def _insert_committed(conn: AsyncConnection, reservation: Reservation) -> None:
    rows = {
        charge.counter: {
            "reservation": reservation.id,
            "counter": charge.counter,
            "at": reservation.at,
            "units": charge.units,
            "lease_until": None,
        }
        for charge in reversed(reservation.charges)
    }
    if conn.dialect.name == "postgresql":
        await conn.execute(pg_insert(spend_entries).on_conflict_do_nothing(), list(rows.values()))
    else:
        await conn.execute(spend_entries.insert().prefix_with("OR IGNORE"), list(rows.values()))
