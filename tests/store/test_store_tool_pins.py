"""The tool pins store contract, on SQLite and PostgreSQL: trust on first use (or not), a changed
definition is pending until accepted, acceptance is seen by every replica, and racing replicas
that list the same tool at once write one pin."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import anyio
import pytest

from broker.catalogue.pins import FIRST_USE, PinNotFound, definition_hash
from broker.store.sql import SqlApprovalStore
from broker.store.tool_pins import SqlToolPinStore
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

WITHDRAW = {
    "name": "withdraw",
    "description": "Withdraw funds to an address.",
    "inputSchema": {"type": "object", "properties": {"amount": {"type": "number"}}},
    "annotations": {"destructiveHint": True},
}
OLD = definition_hash(WITHDRAW)
NEW = definition_hash({**WITHDRAW, "description": "Read-only: shows a balance."})


def test_the_hash_covers_what_the_model_and_the_call_see_and_nothing_else() -> None:
    assert definition_hash({**WITHDRAW, "title": "Withdraw", "_meta": {"x": 1}}) == OLD
    reordered = {
        "annotations": WITHDRAW["annotations"],
        **{k: v for k, v in WITHDRAW.items() if k != "annotations"},
    }
    assert definition_hash(reordered) == OLD
    for field, value in (("name", "withdraw2"), ("inputSchema", {}), ("annotations", {"readOnlyHint": True})):
        assert definition_hash({**WITHDRAW, field: value}) != OLD
    assert definition_hash({k: v for k, v in WITHDRAW.items() if k != "annotations"}) != OLD


@pytest.fixture
def pins(store: SqlApprovalStore) -> SqlToolPinStore:
    return SqlToolPinStore(store)


async def test_first_sighting_is_trusted_then_a_change_is_pending_until_accepted(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    first = await pins.observe("exchange", "withdraw", OLD, now=clock(), trust_new=True)
    assert first.before is None and not first.changed and not first.pin.pending
    assert (first.pin.accepted_by, first.pin.accepted_at) == (FIRST_USE, clock())

    again = await pins.observe(
        "exchange", "withdraw", OLD, now=clock.advance(timedelta(minutes=1)), trust_new=True
    )
    assert not again.changed and again.pin == first.pin

    changed = await pins.observe(
        "exchange", "withdraw", NEW, now=clock.advance(timedelta(minutes=1)), trust_new=True
    )
    assert changed.changed and changed.pin.pending
    assert (changed.before and changed.before.seen_hash, changed.pin.seen_hash) == (OLD, NEW)
    assert changed.pin.accepted_hash == OLD and changed.pin.first_seen_at == first.pin.first_seen_at

    [accepted] = await pins.accept("withdraw", server=None, by="alice", at=clock())
    assert (accepted.accepted_hash, accepted.accepted_by, accepted.pending) == (NEW, "alice", False)
    # Accepting what is already accepted changes nothing; an unknown tool is an error.
    assert await pins.accept("withdraw", server="exchange", by="bob", at=clock()) == []
    with pytest.raises(PinNotFound, match="no tool 'nope' on server 'exchange' has been seen"):
        await pins.accept("nope", server="exchange", by="bob", at=clock())
    # Changing back to the old definition is a change too: only the accepted one is trusted.
    back = await pins.observe("exchange", "withdraw", OLD, now=clock(), trust_new=True)
    assert back.changed and back.pin.pending


async def test_strict_pinning_holds_new_tools_until_accepted(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    new = await pins.observe("exchange", "withdraw", OLD, now=clock(), trust_new=False)
    assert new.pin.pending and new.pin.accepted_hash is None
    await pins.observe("paper", "withdraw", OLD, now=clock(), trust_new=False)
    await pins.observe("paper", "get_ticker", NEW, now=clock(), trust_new=True)

    [only] = await pins.accept("withdraw", server="paper", by="alice", at=clock())
    assert (only.server, only.pending) == ("paper", False)
    assert [pin.server for pin in await pins.accept_all(by="bob", at=clock())] == ["exchange"]
    assert [(pin.server, pin.tool, pin.pending) for pin in await pins.pins()] == [
        ("exchange", "withdraw", False),
        ("paper", "get_ticker", False),
        ("paper", "withdraw", False),
    ]


async def test_replicas_racing_on_a_new_tool_write_one_pin_and_see_each_others_acceptance(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    replicas = [SqlToolPinStore(open_store()) for _ in range(3)]
    sightings = []

    async def sight(replica: SqlToolPinStore) -> None:
        sightings.append(await replica.observe("exchange", "withdraw", OLD, now=clock(), trust_new=False))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for replica in replicas * 4:
                tasks.start_soon(sight, replica)
    assert sum(sighting.before is None for sighting in sightings) == 1
    assert all(sighting.pin.pending for sighting in sightings)

    await replicas[0].accept("withdraw", server="exchange", by="alice", at=clock())
    for replica in replicas:
        [pin] = await replica.pins()
        assert (pin.pending, pin.accepted_by) == (False, "alice")
