"""``spend``: how the spend-limit ledger commits.

```yaml
spend: {durable: true}   # default false
```

On PostgreSQL the ledger commits with ``synchronous_commit = off`` unless ``durable`` (see
broker/store/pg_spend.py for the trade: a server crash may forget ~0.6 s of spend; a WAL flush per
commit costs ~6.6 ms instead of 0.39 ms on this project's disk). On SQLite the ledger writes
through the store, which always syncs. With Redis (``rate_limits: {backend: redis}``) durability
is Redis's own ``appendfsync``, which the broker cannot promise, so ``durable: true`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from broker.config.errors import ConfigError
from broker.config.rate_limits import RateLimitSettings


class SpendEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    durable: bool = False


@dataclass(frozen=True)
class SpendSettings:
    durable: bool = False
    """The PostgreSQL ledger waits for each commit's WAL flush (``synchronous_commit`` as the
    server sets it) instead of committing with ``synchronous_commit = off``."""


def spend_settings(entry: SpendEntry, rate_limits: RateLimitSettings, path: Path) -> SpendSettings:
    if entry.durable and rate_limits.backend == "redis":
        raise ConfigError(
            f"{path}: spend.durable: the spend ledger is in Redis (rate_limits backend redis), whose "
            "durability is Redis's appendfsync setting; drop spend.durable or keep rate limits in the database"
        )
    return SpendSettings(durable=entry.durable)
