"""The escalation posts store contract, on SQLite and PostgreSQL: of writers racing on several
replicas exactly one claims a post; a live claim keeps everyone else out, a lapsed one lets one of
them take it over; a settled post is never claimed again, and only the claim's holder settles it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import anyio
import pytest

from broker.approvals.escalation_posts import EscalationPost, PostOutcome, owed
from broker.store.escalation_posts import SqlEscalationPostStore
from broker.store.sql import SqlApprovalStore
from tests.store.builders import new_approval, requested
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

LEASE = timedelta(minutes=2)


async def test_racing_writers_on_two_replicas_claim_a_post_once(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    first, second = open_store(), open_store()
    approval = await first.create(new_approval(), audit=requested())
    stores = [SqlEscalationPostStore(first), SqlEscalationPostStore(second)]
    won: list[str] = []

    async def claim(writer: str, posts: SqlEscalationPostStore) -> None:
        now = clock()
        if await posts.claim(approval.id, 1, "#escalations", writer=writer, now=now, until=now + LEASE):
            won.append(writer)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for number in range(20):
                group.start_soon(claim, f"writer-{number}", stores[number % 2])
    assert len(won) == 1
    [row] = await stores[1].of([approval.id])
    assert (row.writer, row.claimed_until, row.outcome) == (won[0], clock() + LEASE, None)


async def test_a_lapsed_claim_is_taken_over_and_a_settled_post_is_never_claimed_again(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    approval = await store.create(new_approval(), audit=requested())
    posts = SqlEscalationPostStore(store)
    now = clock()
    assert await posts.claim(approval.id, 1, "#esc", writer="a", now=now, until=now + LEASE)
    assert await posts.claim(approval.id, 1, "#esc", writer="a", now=now, until=now + 2 * LEASE)  # renewed
    assert not await posts.claim(approval.id, 1, "#esc", writer="b", now=now + LEASE, until=now + 3 * LEASE)
    later = now + 2 * LEASE
    assert await posts.claim(approval.id, 1, "#esc", writer="b", now=later, until=later + LEASE)
    # The writer that lost its claim cannot settle the post: the outcome is its successor's.
    assert not await posts.settle(approval.id, 1, "#esc", writer="a", outcome=PostOutcome.POSTED, ts="1.1")
    assert await posts.settle(approval.id, 1, "#esc", writer="b", outcome=PostOutcome.POSTED, ts="2.2")
    far = now + timedelta(days=1)
    assert not await posts.claim(approval.id, 1, "#esc", writer="c", now=far, until=far + LEASE)
    [row] = await posts.of([approval.id])
    assert (row.writer, row.outcome, row.ts) == ("b", PostOutcome.POSTED, "2.2")
    # Another step or channel of the same call is a post of its own.
    assert await posts.claim(approval.id, 2, "#esc", writer="c", now=far, until=far + LEASE)
    assert await posts.claim(approval.id, 1, "#other", writer="c", now=far, until=far + LEASE)


def test_owed_posts_are_those_without_a_row_or_with_a_lapsed_unsettled_claim(clock: ManualClock) -> None:
    now = clock()
    rows = [
        EscalationPost("a1", 1, "#x", "w", now + LEASE),
        EscalationPost("a1", 2, "#x", "w", now - LEASE),
        EscalationPost("a2", 1, "#x", "w", now - LEASE, PostOutcome.POSTED, "1.1"),
    ]
    taken = [("a1", 1, "#x"), ("a1", 2, "#x"), ("a2", 1, "#x"), ("a2", 1, "#y")]
    assert owed(taken, rows, now) == [("a1", 2, "#x"), ("a2", 1, "#y")]
