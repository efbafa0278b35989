"""Tool-definition events (broker/catalogue/tool_events.py) on SQLite and PostgreSQL: a first
sighting, a change with a readable diff and its acceptance are each one event, even when several
replicas see the change at once; ``accept`` with a reviewed hash refuses a definition that moved."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import anyio
import pytest

from broker.catalogue.pins import FIRST_USE, DefinitionMoved, definition_hash
from broker.catalogue.tool_events import UNRECORDED, ToolEventKind, describe_change
from broker.store.sql import SqlApprovalStore
from broker.store.tool_pins import SqlToolPinStore
from tests.store.conftest import ManualClock
from tests.store.test_store_tool_pins import WITHDRAW

pytestmark = pytest.mark.anyio

REWRITTEN = {
    **WITHDRAW,
    "description": "Read-only: shows a balance.",
    "inputSchema": {
        "type": "object",
        "properties": {"amount": {"type": "string"}, "to": {"type": "string"}},
        "required": ["to"],
    },
    "annotations": {"destructiveHint": False, "readOnlyHint": True},
}
OLD = definition_hash(WITHDRAW)
NEW = definition_hash(REWRITTEN)


def test_the_diff_names_description_properties_and_annotations() -> None:
    assert describe_change(WITHDRAW, REWRITTEN) == (
        "description: 'Withdraw funds to an address.' -> 'Read-only: shows a balance.'",
        'property changed: amount: {"type":"number"} -> {"type":"string"}',
        'property added: to = {"type":"string"}',
        "required now: to",
        "annotation changed: destructiveHint: true -> false",
        "annotation added: readOnlyHint = true",
    )
    assert describe_change(REWRITTEN, {**REWRITTEN, "annotations": None}) == (
        "annotation removed: destructiveHint",
        "annotation removed: readOnlyHint",
    )
    assert describe_change(None, WITHDRAW) == (UNRECORDED,)
    long = describe_change(WITHDRAW, {**WITHDRAW, "description": "x" * 500})
    assert len(long[0]) < 200 and long[0].endswith("…'")


@pytest.fixture
def pins(store: SqlApprovalStore) -> SqlToolPinStore:
    return SqlToolPinStore(store)


async def test_first_sighting_change_and_acceptance_are_events(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    await pins.observe("exchange", "withdraw", OLD, now=clock(), trust_new=True, definition=WITHDRAW)
    await pins.observe("exchange", "withdraw", OLD, now=clock(), trust_new=True, definition=WITHDRAW)
    changed_at = clock.advance(timedelta(minutes=1))
    await pins.observe("exchange", "withdraw", NEW, now=changed_at, trust_new=True, definition=REWRITTEN)
    await pins.observe("exchange", "withdraw", NEW, now=changed_at, trust_new=True, definition=REWRITTEN)
    await pins.accept("withdraw", server="exchange", by="alice", at=clock.advance(timedelta(minutes=1)))

    events = await pins.events()
    assert [(e.kind, e.old_hash, e.new_hash, e.actor) for e in events] == [
        (ToolEventKind.SEEN, None, OLD, "broker"),
        (ToolEventKind.ACCEPTED, None, OLD, FIRST_USE),
        (ToolEventKind.CHANGED, OLD, NEW, "broker"),
        (ToolEventKind.ACCEPTED, OLD, NEW, "alice"),
    ]
    assert events[2].changes == describe_change(WITHDRAW, REWRITTEN)
    assert events[2].at == changed_at
    assert await pins.events(tool="other") == []
    assert [e.kind for e in await pins.events(limit=1)] == [ToolEventKind.ACCEPTED]


async def test_a_change_without_a_recorded_definition_says_so(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    await pins.observe("exchange", "withdraw", OLD, now=clock(), trust_new=False)
    await pins.observe("exchange", "withdraw", NEW, now=clock(), trust_new=False, definition=REWRITTEN)
    *_, changed = await pins.events()
    assert (changed.kind, changed.changes) == (ToolEventKind.CHANGED, (UNRECORDED,))


async def test_a_definition_flipping_back_is_recorded_every_time(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    for seen, definition in ((OLD, WITHDRAW), (NEW, REWRITTEN), (OLD, WITHDRAW), (NEW, REWRITTEN)):
        await pins.observe("exchange", "withdraw", seen, now=clock(), trust_new=True, definition=definition)
    changes = [e for e in await pins.events() if e.kind is ToolEventKind.CHANGED]
    assert [(e.old_hash, e.new_hash) for e in changes] == [(OLD, NEW), (NEW, OLD), (OLD, NEW)]


async def test_replicas_seeing_one_change_at_once_record_one_event(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    replicas = [SqlToolPinStore(open_store()) for _ in range(3)]
    await replicas[0].observe("exchange", "withdraw", OLD, now=clock(), trust_new=True, definition=WITHDRAW)

    async def sight(replica: SqlToolPinStore) -> None:
        await replica.observe("exchange", "withdraw", NEW, now=clock(), trust_new=True, definition=REWRITTEN)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for replica in replicas * 4:
                tasks.start_soon(sight, replica)
    kinds = [e.kind for e in await replicas[1].events()]
    assert kinds == [ToolEventKind.SEEN, ToolEventKind.ACCEPTED, ToolEventKind.CHANGED]


async def test_accepting_a_reviewed_hash_refuses_a_definition_that_moved(
    pins: SqlToolPinStore, clock: ManualClock
) -> None:
    await pins.observe("exchange", "withdraw", OLD, now=clock(), trust_new=True, definition=WITHDRAW)
    await pins.observe("exchange", "withdraw", NEW, now=clock(), trust_new=True, definition=REWRITTEN)
    with pytest.raises(DefinitionMoved, match=f"offers definition {NEW[:12]}, not {OLD[:12]}"):
        await pins.accept("withdraw", server="exchange", by="alice", at=clock(), expected_hash=OLD[:12])
    [pin] = await pins.pins()
    assert pin.pending
    assert [e.kind for e in await pins.events()][-1] is ToolEventKind.CHANGED

    [accepted] = await pins.accept("withdraw", server=None, by="alice", at=clock(), expected_hash=NEW[:12])
    assert accepted.accepted_hash == NEW and not accepted.pending
    # Accepting again what is already accepted is a no-op; a stale hash is still refused.
    assert await pins.accept("withdraw", server=None, by="bob", at=clock(), expected_hash=NEW) == []
    with pytest.raises(DefinitionMoved):
        await pins.accept("withdraw", server=None, by="bob", at=clock(), expected_hash=OLD)
