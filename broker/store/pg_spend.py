"""`SpendLedger` on PostgreSQL in one round trip per step: the broker's ledger on PostgreSQL.

The same table and rules as `SqlSpendLedger` (broker.store.spend), which it interoperates with
(same advisory locks, same order), but each step is a single statement on an asyncpg pool, as the
shared rate limiter does (broker.store.ratelimit), because a spend-limited call pays for reserve
and commit on its hot path:

* reserve: ``SELECT * FROM spend_reserve(...)``, a PL/pgSQL function (migration 0014) that takes
  the counters' advisory locks in a fixed order, sums each charge's window (each statement of a
  VOLATILE function takes a fresh snapshot, so it sees every reservation committed before it got
  the locks) and inserts only when all fit. It runs in the statement's own transaction, which
  releases the locks when it ends;
* commit: one UPDATE (clearing ``lease_until``), or an INSERT when the rows were pruned meanwhile;
* release: one DELETE.

Rows older than `retention_seconds` are pruned at most once a minute by a reserving call. When the
database cannot be reached every step raises StoreUnavailable (the gateway fails closed).

Durability: the ledger's connections commit with ``synchronous_commit = off`` unless built with
``durable=True``. A reserve then costs a round trip instead of a WAL flush (measured on this
project's shared CI disk: 0.4 ms instead of 12 ms for reserve + commit), and what it gives up is
narrow: a *PostgreSQL server* crash (not a broker crash) may forget the spend of the last moments
before it (at most 3 x ``wal_writer_delay``, 0.6 s by default). Transactions stay atomic and
serialised, so the race guarantee is unchanged while the server runs. The rate-limit table makes
the same trade more bluntly (UNLOGGED, migration 0002).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import asyncpg
from sqlalchemy.engine import URL

from broker.approvals.ports import StoreUnavailable
from broker.approvals.spending import (
    DEFAULT_LEASE_SECONDS,
    Charge,
    Reservation,
    SpendRefusal,
    check_charges,
)
from broker.store.pg_pool import OwnedPool
from broker.store.spend import DEFAULT_RETENTION_SECONDS, PRUNE_INTERVAL_SECONDS

RESERVE_FUNCTION = """
CREATE OR REPLACE FUNCTION spend_reserve(
    p_reservation text, p_counters text[], p_units bigint[], p_ceilings bigint[], p_since float8[],
    p_now float8, p_lease_until float8)
RETURNS TABLE (refused int, spent bigint, oldest float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    i int;
    total bigint;
    first_at float8;
BEGIN
    PERFORM count(pg_advisory_xact_lock(hashtextextended(k, 0)))
       FROM (SELECT DISTINCT c COLLATE "C" AS k FROM unnest(p_counters) AS c ORDER BY k) AS ordered;
    FOR i IN 1 .. array_length(p_counters, 1) LOOP
        SELECT coalesce(sum(e.units), 0), min(e.at) INTO total, first_at
          FROM spend_entries AS e
         WHERE e.counter = p_counters[i] AND e.at >= p_since[i]
           AND (e.lease_until IS NULL OR e.lease_until > p_now);
        IF total + p_units[i] > p_ceilings[i] THEN
            RETURN QUERY SELECT i, total, first_at;
            RETURN;
        END IF;
    END LOOP;
    INSERT INTO spend_entries (reservation, counter, at, units, lease_until)
    SELECT DISTINCT ON (t.c) p_reservation, t.c, p_now, t.u, p_lease_until
      FROM unnest(p_counters, p_units) WITH ORDINALITY AS t (c, u, n)
     ORDER BY t.c, t.n;
    RETURN QUERY SELECT 0, 0::bigint, NULL::float8;
END
$$
"""

_RESERVE = "SELECT refused, spent, oldest FROM spend_reserve($1, $2, $3, $4, $5, $6, $7)"
_COMMIT = "UPDATE spend_entries SET lease_until = NULL WHERE reservation = $1"
_INSERT_COMMITTED = """
INSERT INTO spend_entries (reservation, counter, at, units, lease_until)
SELECT DISTINCT ON (t.c) $1, t.c, $2, t.u, NULL
  FROM unnest($3::text[], $4::bigint[]) WITH ORDINALITY AS t (c, u, n)
 ORDER BY t.c, t.n
ON CONFLICT DO NOTHING
"""
_RELEASE = "DELETE FROM spend_entries WHERE reservation = $1"
_PRUNE = "DELETE FROM spend_entries WHERE at < $1"

_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresSpendLedger(OwnedPool):
    """A SpendLedger on PostgreSQL; use as ``async with`` (it owns a small connection pool)."""

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = 8,
        timeout: float = 2.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        durable: bool = False,
    ) -> None:
        if lease_seconds <= 0 or retention_seconds <= 0:
            raise ValueError("lease_seconds and retention_seconds must be positive")
        settings = None if durable else {"synchronous_commit": "off"}
        super().__init__(url, pool_size=pool_size, timeout=timeout, server_settings=settings)
        self._lease = lease_seconds
        self._retention = retention_seconds
        self._next_prune = -math.inf

    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], now: float
    ) -> Reservation | SpendRefusal:
        check_charges(charges)
        pool = self._live()
        try:
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_INTERVAL_SECONDS
                await pool.execute(_PRUNE, now - self._retention, timeout=self._timeout)
            row = await pool.fetchrow(
                _RESERVE,
                reservation_id,
                [charge.counter for charge in charges],
                [charge.units for charge in charges],
                [charge.ceiling for charge in charges],
                [charge.since for charge in charges],
                now,
                now + self._lease,
                timeout=self._timeout,
            )
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"cannot reserve spend: {exc}") from exc
        assert row is not None, "spend_reserve always returns one row"
        if row["refused"] == 0:
            return Reservation(reservation_id, tuple(charges), now)
        return SpendRefusal(charges[row["refused"] - 1], int(row["spent"]), row["oldest"])

    async def commit(self, reservation: Reservation) -> None:
        pool = self._live()
        try:
            done: str = await pool.execute(_COMMIT, reservation.id, timeout=self._timeout)
            if done == "UPDATE 0":
                # Pruned meanwhile (a call slower than the retention): the spend still happened.
                await pool.execute(
                    _INSERT_COMMITTED,
                    reservation.id,
                    reservation.at,
                    [charge.counter for charge in reservation.charges],
                    [charge.units for charge in reservation.charges],
                    timeout=self._timeout,
                )
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"cannot commit spend: {exc}") from exc

    async def release(self, reservation: Reservation) -> None:
        try:
            await self._live().execute(_RELEASE, reservation.id, timeout=self._timeout)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"cannot release spend: {exc}") from exc
