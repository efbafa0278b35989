"""Every edge of the state machine through the store, and every move it must refuse."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import ApprovalNotFound, InvalidTransition
from broker.approvals.transitions import ALLOWED_TRANSITIONS
from broker.store.sql import SqlApprovalStore

from .builders import PATH_TO, S, create, entering, new_approval, requested, walk_to
from .conftest import ManualClock

pytestmark = pytest.mark.anyio

ALLOWED_EDGES = [
    (source, target) for source, targets in ALLOWED_TRANSITIONS.items() for target in sorted(targets)
]


@pytest.mark.parametrize(("source", "target"), ALLOWED_EDGES, ids=lambda s: s.value)
async def test_allowed_transition(
    store: SqlApprovalStore, clock: ManualClock, source: ApprovalStatus, target: ApprovalStatus
) -> None:
    approval = await walk_to(store, await create(store), source)
    clock.advance(timedelta(seconds=30))
    changes = {"result": {"content": [{"type": "text", "text": "ok"}]}} if target is S.COMPLETED else {}

    moved = await store.transition(
        approval.id, expected={source}, to=target, changes=changes, audit=entering(target, "replica-a", n=1)
    )

    assert moved.status is target
    assert moved.version == approval.version + 1
    assert await store.get(approval.id) == moved
    last = (await store.audit_trail(approval.id))[-1]
    assert (last.event, last.actor, last.at, last.details) == (target.value, "replica-a", clock.now, {"n": 1})
    if target in {S.APPROVED, S.DENIED, S.EXPIRED, S.CANCELLED}:
        assert (moved.decided_by, moved.decided_at) == ("replica-a", clock.now)
    if target is S.RELEASED:
        assert (moved.released_by, moved.released_at) == ("replica-a", clock.now)
        assert moved.decided_by == approval.decided_by
    if target in {S.COMPLETED, S.FAILED}:
        assert moved.completed_at == clock.now
    if target is S.COMPLETED:
        assert moved.result == changes["result"]


async def test_explicit_changes_win_over_implied_ones(store: SqlApprovalStore, clock: ManualClock) -> None:
    approval = await create(store)
    decided_at = clock.now - timedelta(seconds=5)

    moved = await store.transition(
        approval.id,
        expected={S.PENDING},
        to=S.APPROVED,
        changes={
            "decided_by": "alice@example.com",
            "decided_at": decided_at,
            "decided_via": "slack",
            "decision_reason": "looks fine",
        },
        audit=entering(S.APPROVED, "slack-bot"),
    )

    assert (moved.decided_by, moved.decided_at, moved.decided_via, moved.decision_reason) == (
        "alice@example.com",
        decided_at,
        "slack",
        "looks fine",
    )


async def test_transition_can_deliver_in_the_same_step(store: SqlApprovalStore, clock: ManualClock) -> None:
    approval = await walk_to(store, await create(store), S.RELEASED)

    done = await store.transition(
        approval.id,
        expected={S.RELEASED},
        to=S.FAILED,
        changes={"result": {"error": "upstream timed out"}, "result_delivered_at": clock.now},
        audit=entering(S.FAILED, "replica-a"),
    )

    assert done.is_delivered and done.is_terminal
    again, created = await store.find_or_create(new_approval(), audit=requested())
    assert created and again.id != done.id


async def test_forbidden_transitions_are_refused_and_change_nothing(store: SqlApprovalStore) -> None:
    in_state = {status: await walk_to(store, await create(store), status) for status in ApprovalStatus}
    trails = {status: await store.audit_trail(a.id) for status, a in in_state.items()}

    for source in ApprovalStatus:
        for target in ApprovalStatus:
            if target in ALLOWED_TRANSITIONS[source]:
                continue
            with pytest.raises(ValueError, match="not reachable"):
                await store.transition(
                    in_state[source].id, expected={source}, to=target, audit=entering(target)
                )
    # approved -> cancelled in particular: once approved the release goes ahead.
    with pytest.raises(ValueError, match="not reachable"):
        await store.transition(
            in_state[S.APPROVED].id,
            expected={S.PENDING, S.APPROVED},
            to=S.CANCELLED,
            audit=entering(S.CANCELLED),
        )

    for status, approval in in_state.items():
        assert await store.get(approval.id) == approval
        assert await store.audit_trail(approval.id) == trails[status]


async def test_compare_and_set_refuses_every_state_but_the_expected_one(store: SqlApprovalStore) -> None:
    in_state = {status: await walk_to(store, await create(store), status) for status in ApprovalStatus}

    for actual, approval in in_state.items():
        for source, target in ALLOWED_EDGES:
            if source is actual:
                continue
            with pytest.raises(InvalidTransition) as raised:
                await store.transition(approval.id, expected={source}, to=target, audit=entering(target))
            assert raised.value.current == approval
            assert raised.value.expected == {source}
            assert raised.value.to is target
            assert f"is {actual.value}" in str(raised.value)
    for approval in in_state.values():
        assert await store.get(approval.id) == approval
    assert (await store.verify_audit_chain()).rows_checked == sum(len(PATH_TO[s]) + 1 for s in ApprovalStatus)


async def test_several_expected_states(store: SqlApprovalStore) -> None:
    approval = await create(store)

    moved = await store.transition(
        approval.id, expected=[S.PENDING, S.PENDING], to=S.EXPIRED, audit=entering(S.EXPIRED, "timeout")
    )

    assert moved.status is S.EXPIRED


async def test_invalid_transition_names_who_decided_and_when(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    approval = await create(store)
    await store.transition(approval.id, expected={S.PENDING}, to=S.DENIED, audit=entering(S.DENIED, "bob"))

    with pytest.raises(InvalidTransition, match=re.escape(f"decided by bob at {clock.now.isoformat()}")):
        await store.transition(approval.id, expected={S.PENDING}, to=S.APPROVED, audit=entering(S.APPROVED))


async def test_transition_of_unknown_approval(store: SqlApprovalStore) -> None:
    with pytest.raises(ApprovalNotFound, match="apv-missing"):
        await store.transition("apv-missing", expected={S.PENDING}, to=S.APPROVED, audit=entering(S.APPROVED))
    assert (await store.verify_audit_chain()).rows_checked == 0


async def test_transition_refuses_bad_changes(store: SqlApprovalStore) -> None:
    approval = await create(store)
    bad_changes: list[tuple[dict[str, object], str]] = [
        ({"status": "approved"}, "'status' cannot be changed"),
        ({"agent": "someone-else"}, "'agent' cannot be changed"),
        ({"arguments": {"amount": 1_000_000}}, "'arguments' cannot be changed"),
        ({"decided_at": "yesterday"}, "'decided_at' must be datetime"),
        ({"result": ["not", "an", "object"]}, "'result' must be dict"),
        ({"result": {"nan": float("nan")}}, "canonical JSON"),
    ]
    for changes, complaint in bad_changes:
        with pytest.raises(ValueError, match=complaint):
            await store.transition(
                approval.id, expected={S.PENDING}, to=S.APPROVED, changes=changes, audit=entering(S.APPROVED)
            )
    with pytest.raises(ValueError, match="at least one expected status"):
        await store.transition(approval.id, expected=set(), to=S.APPROVED, audit=entering(S.APPROVED))
    assert await store.get(approval.id) == approval
