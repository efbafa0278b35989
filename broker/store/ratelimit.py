"""Rate limits shared by every broker replica on one PostgreSQL database.

The same exact sliding log as the in-memory `SlidingWindowLimiter`: a call is allowed when
fewer than `max_calls` calls of its key fall in the last window. Each key is one row with
the timestamps of its counted calls. One ``INSERT .. ON CONFLICT DO UPDATE`` prunes the
old timestamps, counts, and appends the new one while holding the row's lock, so replicas
hitting one key at the same moment are serialized by the database: an agent cannot
multiply its quota by spreading its calls over replicas.

The table is UNLOGGED (migration 0002): counters are not worth a WAL write per call, and
after a database crash they start from zero. Timestamps are the replicas' wall clocks
(keep them NTP-synchronized; a replica whose clock is off by d shifts windows by d).

When the database cannot be reached the limiter fails closed: a rate-limited tool is
refused (and the failure logged) until it is back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import URL

from broker.policy.decision import RateLimit
from broker.proxy.ratelimit import RateVerdict
from broker.store.pg_pool import OwnedPool

logger = logging.getLogger(__name__)

TABLE = "rate_limit_hits"
"""What a refused agent is told to wait while the shared counters are unreachable."""

_HIT = f"""
INSERT INTO {TABLE} AS r (key, hits, allowed, expires_at)
VALUES ($1, ARRAY[$2::float8], true, $2::float8 + $3::float8)
ON CONFLICT (key) DO UPDATE SET
    hits = CASE
        WHEN (SELECT count(*) FROM unnest(r.hits) AS h WHERE h > $2::float8 - $3::float8) < $4::int
        THEN ARRAY(SELECT h FROM unnest(r.hits) AS h WHERE h > $2::float8 - $3::float8 ORDER BY h)
             || $2::float8
        ELSE ARRAY(SELECT h FROM unnest(r.hits) AS h WHERE h > $2::float8 - $3::float8 ORDER BY h)
    END,
    allowed = (SELECT count(*) FROM unnest(r.hits) AS h WHERE h > $2::float8 - $3::float8) < $4::int,
    expires_at = GREATEST(r.expires_at, $2::float8 + $3::float8)
RETURNING allowed, hits
"""
_PRUNE = f"DELETE FROM {TABLE} WHERE expires_at < $1::float8"

_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresRateLimiter(OwnedPool):
    """A RateLimiter on PostgreSQL; use as ``async with`` (it owns a small connection pool)."""

    def __init__(
        self,
        url: str | URL,
        *,
        clock: Callable[[], float] = time.time,
        pool_size: int = 8,
        timeout: float = 2.0,
        prune_interval: float = 60.0,
    ) -> None:
        super().__init__(url, pool_size=pool_size, timeout=timeout)
        self._clock = clock
        self._prune_interval = prune_interval
        self._next_prune = -math.inf
        self._failing = False

    async def hit(self, key: str, limit: RateLimit) -> RateVerdict:
        pool = self._live()
        now = self._clock()
        window = float(limit.window_seconds)
        try:
            if now >= self._next_prune:
                self._next_prune = now + self._prune_interval
                await pool.execute(_PRUNE, now, timeout=self._timeout)
            row = await pool.fetchrow(_HIT, key.encode(), now, window, limit.max_calls, timeout=self._timeout)
        except _UNREACHABLE as exc:
            if not self._failing:
                logger.error("shared rate limits unreachable; refusing rate-limited calls: %s", exc)
                self._failing = True
            return RateVerdict.uncounted("the shared rate-limit counters (PostgreSQL) are unreachable")
        if self._failing:
            logger.warning("shared rate limits reachable again")
            self._failing = False
        assert row is not None, "INSERT .. RETURNING always returns the row"
        if row["allowed"]:
            return RateVerdict(True)
        hits: list[float] = row["hits"]
        # The call that has to leave the window before one more fits.
        retry_after = hits[len(hits) - limit.max_calls] - (now - window)
        return RateVerdict(False, max(math.ceil(retry_after * 1000) / 1000, 0.001))
