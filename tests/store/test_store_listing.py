"""Listing for the inbox and the history: search, the history's status set, and the capped count."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import InvalidValue, ListPosition
from broker.store.sql import SqlApprovalStore

from .builders import S, create, walk_to
from .conftest import ManualClock

pytestmark = pytest.mark.anyio

HISTORY = set(ApprovalStatus) - {S.PENDING}


async def test_search_matches_tool_or_agent_ignoring_case_or_an_exact_id(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    refund = await create(store, agent="Billing-Bot", tool="payments__refund")
    clock.advance(timedelta(seconds=1))
    order = await create(store, agent="trader", tool="place_order")
    clock.advance(timedelta(seconds=1))
    odd = await create(store, agent="odd%_agent", tool="get_balances")

    async def ids(search: str) -> list[str]:
        return [a.id for a in await store.list(statuses={S.PENDING}, search=search)]

    assert await ids("REFUND") == [refund.id]
    assert await ids("billing") == [refund.id]
    assert await ids("_") == [odd.id, order.id, refund.id]
    # LIKE's wildcards are plain characters in a search.
    assert await ids("%_") == [odd.id]
    assert await ids(order.id) == [order.id]
    assert await ids(order.id[:-1]) == []  # ids match exactly, not by prefix
    assert await ids("nothing") == []
    with pytest.raises(InvalidValue):
        await store.list(search="x" * 201)


async def test_search_pages_with_the_cursor_and_keeps_other_filters(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    made = []
    for index in range(5):
        made.append(await create(store, agent=f"agent-{index % 2}", tool="payments__refund"))
        clock.advance(timedelta(seconds=1))
    first = await store.list(statuses={S.PENDING}, search="refund", agent="agent-0", limit=2)
    assert [a.id for a in first] == [made[4].id, made[2].id]
    rest = await store.list(
        statuses={S.PENDING}, search="refund", agent="agent-0", limit=2, after=ListPosition.of(first[-1])
    )
    assert [a.id for a in rest] == [made[0].id]


async def test_the_history_lists_every_status_but_pending_newest_first(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    finished = []
    for status in sorted(HISTORY, key=lambda s: s.value):
        approval = await create(store)
        finished.append(await walk_to(store, approval, status))
        clock.advance(timedelta(seconds=1))
    await create(store)
    listed = await store.list(statuses=HISTORY)
    assert [a.id for a in listed] == [a.id for a in reversed(finished)]
    assert [a.id for a in await store.list(statuses={S.DENIED})] == [
        a.id for a in finished if a.status is S.DENIED
    ]


async def test_the_pending_count_can_stop_early(store: SqlApprovalStore) -> None:
    for _ in range(4):
        await create(store)
    denied = await walk_to(store, await create(store), S.DENIED)
    assert denied.status is S.DENIED
    assert await store.pending_count() == 4
    assert await store.pending_count(at_most=10) == 4
    assert await store.pending_count(at_most=4) == 4
    assert await store.pending_count(at_most=2) == 3  # "more than 2"
