"""Pruning tool-definition events, on SQLite and PostgreSQL: old events go, recent ones stay, and
the events that explain a pin (its last acceptance, the pending changes since, its last sighting)
stay however old; replicas pruning at once delete each event once; the sweep runs it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest

from broker.approvals.service import ApprovalService
from broker.catalogue.pins import definition_hash
from broker.catalogue.retention import EventRetention
from broker.catalogue.tool_events import UNRECORDED
from broker.store.sql import SqlApprovalStore
from broker.store.tool_pins import SqlToolPinStore
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

KEEP = timedelta(days=90)
DAY = timedelta(days=1)


def definition(description: str) -> dict[str, Any]:
    return {"name": "withdraw", "description": description, "inputSchema": {"type": "object"}}


@pytest.fixture
def pins(store: SqlApprovalStore) -> SqlToolPinStore:
    return SqlToolPinStore(store)


async def sight(
    pins: SqlToolPinStore, tool: str, description: str, at: Any, *, trust_new: bool = True
) -> None:
    tool_definition = definition(description)
    await pins.observe(
        "ex", tool, definition_hash(tool_definition), now=at, trust_new=trust_new, definition=tool_definition
    )


async def history(pins: SqlToolPinStore, tool: str) -> list[tuple[str, str]]:
    return [(event.kind.value, event.actor) for event in await pins.events(tool=tool, limit=1000)]


async def churn(pins: SqlToolPinStore, clock: ManualClock) -> None:
    """Four tools, 200 days ago and later: see each test for what must survive."""
    start = clock()
    # Seen, accepted, changed, accepted by alice, then changed again (pending), all long ago.
    await sight(pins, "withdraw", "v1", start)
    await sight(pins, "withdraw", "v2", start + DAY)
    await pins.accept("withdraw", server="ex", by="alice", at=start + 2 * DAY)
    await sight(pins, "withdraw", "v3", start + 3 * DAY)
    # Seen and accepted at first use long ago, never changed since.
    await sight(pins, "quiet", "v1", start)
    # Strict pinning: nobody ever accepted it, so its whole history is pending.
    await sight(pins, "strict", "v1", start, trust_new=False)
    await sight(pins, "strict", "v2", start + DAY, trust_new=False)
    # Changed and accepted twice, but within the retention.
    recent = start + timedelta(days=200) - timedelta(days=30)
    await sight(pins, "fresh", "v1", recent)
    await sight(pins, "fresh", "v2", recent + DAY)
    await pins.accept("fresh", server="ex", by="bob", at=recent + DAY)
    clock.advance(timedelta(days=200))


async def test_old_events_go_recent_ones_and_those_explaining_a_pin_stay(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    await churn(pins, clock)
    fresh_before = await history(pins, "fresh")

    assert await pins.prune_events(before=clock() - KEEP, limit=100) == 3
    # The last acceptance (alice's) and the pending change after it, which is also the last sighting.
    assert await history(pins, "withdraw") == [("accepted", "alice"), ("changed", "broker")]
    assert await history(pins, "quiet") == [("seen", "broker"), ("accepted", "first-use")]
    assert await history(pins, "strict") == [("seen", "broker"), ("changed", "broker")]
    assert await history(pins, "fresh") == fresh_before
    assert await pins.prune_events(before=clock() - KEEP, limit=100) == 0

    # The kept sighting still carries the definition the next change is described against.
    await sight(pins, "withdraw", "v4", clock())
    last = (await pins.events(tool="withdraw", limit=1))[0]
    assert last.changes and UNRECORDED not in last.changes[0]
    assert "'v3' -> 'v4'" in last.changes[0]


async def test_a_pass_deletes_at_most_its_batch_oldest_first(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    await churn(pins, clock)
    ids = [event.id for event in await pins.events(tool="withdraw", limit=1000)]
    assert await pins.prune_events(before=clock() - KEEP, limit=2) == 2
    assert [event.id for event in await pins.events(tool="withdraw", limit=1000)] == ids[2:]
    with pytest.raises(ValueError, match="limit must be positive"):
        await pins.prune_events(before=clock(), limit=0)


async def test_replicas_pruning_at_once_delete_each_event_once(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    first = SqlToolPinStore(open_store())
    for number in range(20):
        await sight(first, "withdraw", f"v{number}", clock())
    await first.accept("withdraw", server="ex", by="alice", at=clock())
    clock.advance(timedelta(days=100))
    replicas = [SqlToolPinStore(open_store()) for _ in range(3)]
    deleted: list[int] = []

    async def prune(replica: SqlToolPinStore) -> None:
        deleted.append(await replica.prune_events(before=clock() - KEEP, limit=5))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for replica in replicas * 3:
                tasks.start_soon(prune, replica)
    # 22 events: only the last sighting and alice's acceptance must stay.
    assert sum(deleted) == 20
    assert await history(first, "withdraw") == [("changed", "broker"), ("accepted", "alice")]


async def test_the_sweep_prunes_a_batch_a_pass_then_waits_while_nothing_is_due(
    store: SqlApprovalStore, pins: SqlToolPinStore, clock: ManualClock
) -> None:
    await churn(pins, clock)
    service = ApprovalService(store, replica="r1", clock=clock)
    service.add_sweep_step(EventRetention(pins, keep=KEEP, batch=2, idle=timedelta(minutes=10)))

    await service.sweep()
    assert len(await pins.events(tool="withdraw", limit=1000)) == 3
    await service.sweep()  # a full batch: more may be waiting, so the next pass prunes again
    assert len(await pins.events(tool="withdraw", limit=1000)) == 2

    # Accepting makes alice's old acceptance prunable, but the last pass deleted less than a
    # batch: nothing is due for ten minutes.
    await pins.accept("withdraw", server="ex", by="carol", at=clock() - timedelta(days=150))
    await service.sweep()
    assert len(await pins.events(tool="withdraw", limit=1000)) == 3
    clock.advance(timedelta(minutes=10))
    await service.sweep()
    assert await history(pins, "withdraw") == [("changed", "broker"), ("accepted", "carol")]

    with pytest.raises(ValueError, match="retention must be positive"):
        EventRetention(pins, keep=timedelta(0))
