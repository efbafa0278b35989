"""Pruning the ``tool_events`` table (broker.catalogue.retention decides when and how far back).

An event older than the cutoff goes only when, for its tool, both a later ``accepted`` event and a
later sighting (``seen`` or ``changed``) exist. So these survive however old they are:

* the last ``accepted`` event: who accepted the definition the pin trusts, and when;
* every event after it, the pending ``changed`` ones included: what a reviewer has to read
  before ``broker tools accept`` (all of a tool's events, when nobody ever accepted it);
* the last sighting, which carries the definition the next change is described against
  (`SqlToolPinStore._last_definition`).

One DELETE of at most `limit` rows, oldest first. On PostgreSQL the rows are chosen ``FOR UPDATE
SKIP LOCKED``: replicas pruning at once take different rows; without it they all pick the same
oldest rows, wait for the first to delete them and delete nothing themselves (the race test saw
5 of 20 deleted by nine passes instead of 20). A row is deleted once either way. SQLite has one
writer, and no FOR UPDATE.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Exists, delete, exists, select

from broker.approvals.clock import require_utc
from broker.catalogue.tool_events import ToolEventKind
from broker.store.sql import SqlApprovalStore
from broker.store.tables import tool_events

_SIGHTINGS = (ToolEventKind.SEEN.value, ToolEventKind.CHANGED.value)


async def prune_tool_events(store: SqlApprovalStore, *, before: datetime, limit: int) -> int:
    """Deletes up to `limit` events older than `before` that no longer explain a pin; returns how many."""
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    before = require_utc(before, field="retention cutoff")
    old = tool_events.alias("old")
    later = tool_events.alias("later")

    def later_of(*kinds: str) -> Exists:
        return exists().where(
            later.c.server == old.c.server,
            later.c.tool == old.c.tool,
            later.c.kind.in_(kinds),
            later.c.id > old.c.id,
        )

    doomed = (
        select(old.c.id)
        .where(old.c.at < before, later_of(ToolEventKind.ACCEPTED.value), later_of(*_SIGHTINGS))
        .order_by(old.c.id)
        .limit(limit)
        .with_for_update(of=old, skip_locked=True)
    )
    async with store.transaction("prune tool definition events") as conn:
        result = await conn.execute(delete(tool_events).where(tool_events.c.id.in_(doomed)))
    return int(result.rowcount or 0)
