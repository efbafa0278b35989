"""How long tool-definition events are kept (``tool_events: {retention_days: 90}``), run as a
step of the approval sweep (`ApprovalService.add_sweep_step`).

Upstreams that churn their tool definitions write events forever; the pins themselves (one row
per tool) do not grow. Every replica that sweeps prunes: each pass deletes at most `batch` of the
oldest expired events in one statement (the store keeps those that explain a pin, see
broker.store.tool_event_retention). A full batch means more are waiting, so the next sweep prunes
again; otherwise nothing is due for `idle`, which keeps a quiet table from costing a DELETE every
second. A failed prune waits `idle` too, so a broken statement is not retried, and logged, on
every sweep.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from broker.catalogue.pins import PinStore

DEFAULT_RETENTION_DAYS: Final = 90
BATCH: Final = 1000
IDLE: Final = timedelta(minutes=10)


class EventRetention:
    def __init__(
        self, pins: PinStore, *, keep: timedelta, batch: int = BATCH, idle: timedelta = IDLE
    ) -> None:
        if keep <= timedelta(0):
            raise ValueError(f"retention must be positive, got {keep}")
        if batch < 1:
            raise ValueError(f"batch must be positive, got {batch}")
        self._pins = pins
        self._keep = keep
        self._batch = batch
        self._idle = idle
        self._due_at: datetime | None = None

    async def __call__(self, now: datetime) -> int:
        """One sweep's share: how many events this replica deleted (0 when nothing was due)."""
        if self._due_at is not None and now < self._due_at:
            return 0
        self._due_at = now + self._idle
        pruned = await self._pins.prune_events(before=now - self._keep, limit=self._batch)
        if pruned >= self._batch:
            self._due_at = None
        return pruned
