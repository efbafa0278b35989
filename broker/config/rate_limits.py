"""``rate_limits``: where the counters of rules' ``rate_limit`` live.

In memory by default on SQLite; in the database (shared by replicas) by default on PostgreSQL;
or in Redis. A backend that cannot work with the rest of the configuration is refused at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from broker.config.errors import ConfigError
from broker.store.database import Backend, backend_of


class RateLimitsEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "database", "redis"] | None = None
    redis_url: str | None = None


@dataclass(frozen=True)
class RateLimitSettings:
    backend: Literal["memory", "database", "redis"] | None = None
    """Where rate-limit counters live; None: in memory on SQLite, in the database on PostgreSQL
    (replicas then share them)."""
    redis_url: str | None = None
    """For backend redis; BROKER_REDIS_URL overrides it."""


def rate_limit_settings(
    entry: RateLimitsEntry, database_url: str, environ: Mapping[str, str], path: Path
) -> RateLimitSettings:
    redis_url = environ.get("BROKER_REDIS_URL") or entry.redis_url
    if entry.backend == "redis":
        if not redis_url:
            raise ConfigError(
                f"{path}: rate_limits: backend redis needs redis_url (or BROKER_REDIS_URL), "
                "e.g. redis://127.0.0.1:6379/0"
            )
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{path}: rate_limits.redis_url: not a Redis URL: {redis_url!r}")
    elif entry.redis_url is not None:
        raise ConfigError(f"{path}: rate_limits.redis_url is only used with backend: redis")
    if entry.backend == "database":
        try:
            backend = backend_of(database_url)
        except ValueError as exc:
            raise ConfigError(f"{path}: database_url: {exc}") from exc
        if backend is not Backend.POSTGRESQL:
            raise ConfigError(
                f"{path}: rate_limits: backend database needs PostgreSQL (database_url is SQLite); "
                "use memory, or redis to share limits between processes"
            )
    return RateLimitSettings(backend=entry.backend, redis_url=redis_url if entry.backend == "redis" else None)
