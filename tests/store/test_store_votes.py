"""The votes store contract, on SQLite and PostgreSQL: one vote per (approval, approver), and the
vote that reaches the quorum approves exactly once, however the last votes race."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import anyio
import pytest

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import ApprovalStatus, Vote
from broker.approvals.ports import ApprovalNotFound, InvalidTransition
from broker.approvals.quorum import Requirement, Tally, tally
from broker.store.sql import SqlApprovalStore
from broker.store.votes import SqlVoteStore
from tests.store.builders import new_approval, requested
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

S = ApprovalStatus
TWO: Callable[[Sequence[Vote]], Tally] = partial(tally, requirement=Requirement(2))


def voted(name: str) -> AuditEvent:
    return AuditEvent(AuditEventKind.VOTED, name, {"via": "api"})


async def cast(votes: SqlVoteStore, approval_id: str, name: str, clock: ManualClock, via: str = "api"):  # type: ignore[no-untyped-def]
    return await votes.cast(
        approval_id, Vote(name, frozenset({"risk"}), via, clock()), reason=None, audit=voted(name), tally=TWO
    )


async def test_votes_accumulate_until_the_quorum_approves(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    votes = SqlVoteStore(store)
    approval = await store.create(new_approval(quorum=2), audit=requested())

    first = await cast(votes, approval.id, "alice", clock)
    assert (first.new, first.decided) == (True, False)
    assert first.approval.status is S.PENDING
    assert [vote.approver for vote in first.approval.votes] == ["alice"]
    assert first.approval.version == approval.version + 1

    second = await cast(votes, approval.id, "bob", clock)
    assert (second.new, second.decided) == (True, True)
    assert second.approval.status is S.APPROVED
    assert second.approval.decided_by == "alice, bob"
    assert (await store.get(approval.id)) == second.approval
    events = [record.event for record in await store.audit_trail(approval.id)]
    assert events == ["requested", "voted", "voted", "approved"]
    assert (await store.verify_audit_chain()).ok


async def test_a_person_counts_once_whatever_the_channel(store: SqlApprovalStore, clock: ManualClock) -> None:
    votes = SqlVoteStore(store)
    approval = await store.create(new_approval(quorum=2), audit=requested())
    await cast(votes, approval.id, "alice", clock, via="web")
    again = await cast(votes, approval.id, "alice", clock, via="slack")
    assert (again.new, again.decided) == (False, False)
    assert again.approval.status is S.PENDING
    assert [vote.via for vote in again.approval.votes] == ["web"]
    assert [r.event for r in await store.audit_trail(approval.id)] == ["requested", "voted", "voted"]


async def test_no_vote_on_a_decided_or_missing_approval(store: SqlApprovalStore, clock: ManualClock) -> None:
    votes = SqlVoteStore(store)
    approval = await store.create(new_approval(quorum=2), audit=requested())
    await store.transition(
        approval.id, expected={S.PENDING}, to=S.DENIED, audit=AuditEvent(AuditEventKind.DENIED, "carol")
    )
    with pytest.raises(InvalidTransition) as late:
        await cast(votes, approval.id, "alice", clock)
    assert late.value.current.status is S.DENIED
    assert late.value.current.votes == ()
    with pytest.raises(ApprovalNotFound):
        await cast(votes, "apv-nope", "alice", clock)


async def twenty_votes(
    replicas: list[SqlVoteStore], approval_id: str, clock: ManualClock
) -> tuple[list[str], list[S]]:
    """Who decided, and what the late voters found, after 20 simultaneous votes from 5 people."""
    decided: list[str] = []
    late: list[S] = []

    async def vote(replica: SqlVoteStore, name: str) -> None:
        try:
            result = await cast(replica, approval_id, name, clock)
        except InvalidTransition as lost:
            late.append(lost.current.status)
        else:
            if result.decided:
                decided.append(name)

    async with anyio.create_task_group() as group:
        for n in range(20):
            group.start_soon(vote, replicas[n % 2], f"human-{n % 5}")
    return decided, late


async def test_racing_last_votes_on_two_replicas_approve_exactly_once(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    replicas = [SqlVoteStore(open_store()), SqlVoteStore(open_store())]
    store = open_store()
    for round_ in range(5):
        approval = await store.create(new_approval(quorum=2, arguments={"round": round_}), audit=requested())
        with anyio.fail_after(30):
            decided, late = await twenty_votes(replicas, approval.id, clock)
        row = await store.get(approval.id)
        assert row is not None and row.status is S.APPROVED
        assert len(decided) == 1
        assert len(row.decided_by.split(", ")) == 2  # type: ignore[union-attr]
        assert set(late) <= {S.APPROVED}
        events = [r.event for r in await store.audit_trail(approval.id)]
        assert events.count("approved") == 1
