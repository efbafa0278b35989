"""Where the shared state lives besides approvals: rate-limit and spend counters, replica notifications."""

from __future__ import annotations

from collections.abc import Callable

from broker.approvals.spending import SpendLedger
from broker.config.settings import BrokerSettings
from broker.proxy.ratelimit import RateLimiter, SlidingWindowLimiter
from broker.store.database import Backend, backend_of
from broker.store.notify import ReplicaFeed
from broker.store.pg_spend import PostgresSpendLedger
from broker.store.ratelimit import PostgresRateLimiter
from broker.store.spend import SqlSpendLedger
from broker.store.sql import SqlApprovalStore


def rate_limiter_for(settings: BrokerSettings) -> RateLimiter:
    """Where rate-limit counters live. By default in memory on SQLite (one process) and in the
    database on PostgreSQL, so that an agent cannot multiply its quota by calling several replicas."""
    backend = settings.rate_limits.backend
    on_postgres = backend_of(settings.database_url) is Backend.POSTGRESQL
    if backend is None:
        backend = "database" if on_postgres else "memory"
    if backend == "database":
        if not on_postgres:
            raise ValueError("rate_limits backend 'database' needs a PostgreSQL database_url")
        return PostgresRateLimiter(settings.database_url)
    if backend == "redis":
        if not settings.rate_limits.redis_url:
            raise ValueError("rate_limits backend 'redis' needs a redis_url")
        # Imported here: only deployments that chose Redis pay for loading its client.
        from broker.store.redis_ratelimit import RedisRateLimiter

        return RedisRateLimiter(settings.rate_limits.redis_url)
    return SlidingWindowLimiter()


def spend_ledger_for(settings: BrokerSettings, store: SqlApprovalStore) -> SpendLedger:
    """Where spend-limit counters live: in Redis when rate limits are shared through Redis, else in
    the approval store's database (shared by every replica on PostgreSQL, through the one-round-trip
    asyncpg ledger)."""
    if settings.rate_limits.backend == "redis" and settings.rate_limits.redis_url:
        from broker.store.redis_spend import RedisSpendLedger

        return RedisSpendLedger(settings.rate_limits.redis_url)
    if backend_of(settings.database_url) is Backend.POSTGRESQL:
        return PostgresSpendLedger(settings.database_url, durable=settings.spend.durable)
    return SqlSpendLedger(store)


def replica_feed_for(
    settings: BrokerSettings, *, replica: str, on_lost: Callable[[str], None]
) -> ReplicaFeed | None:
    """Other replicas' changes heard through PostgreSQL notifications; SQLite has one process."""
    if backend_of(settings.database_url) is not Backend.POSTGRESQL:
        return None
    return ReplicaFeed(settings.database_url, replica=replica, on_lost=on_lost)
