"""The grants store contract, on SQLite and PostgreSQL: the deciding vote makes the grant in its own
transaction, a use is a compare-and-increment that never exceeds max_calls however calls race on
several replicas, and expiry, revocation, scope, rule and policy revision all end a grant's reach."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import pytest

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.canonical import arguments_hash
from broker.approvals.grants import Grant, GrantRequest, GrantScope, grant_for, narrowest
from broker.approvals.model import Approval, ApprovalStatus, Vote
from broker.approvals.ports import GrantNotFound
from broker.approvals.quorum import Requirement, Tally, tally
from broker.policy.grants import GrantAllowance
from broker.store.grants import SqlGrantStore
from broker.store.sql import SqlApprovalStore
from broker.store.votes import SqlVoteStore
from tests.store.builders import entering, new_approval, requested
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

ALLOWANCE = GrantAllowance(max_seconds=3600, max_calls=5, scopes=("identical", "matching"))
ARGUMENTS = {"order": "A-17", "amount": 120}


def maker(clock: ManualClock) -> Callable[[Approval, Tally, Mapping[str, GrantRequest | None]], Grant | None]:
    def make(approval: Approval, result: Tally, requests: Mapping[str, GrantRequest | None]) -> Grant | None:
        chosen = narrowest([requests.get(name) for name in result.counted], ALLOWANCE)
        return None if chosen is None else grant_for(approval, chosen, result.counted, clock())

    return make


async def approve_with_grant(
    store: SqlApprovalStore,
    clock: ManualClock,
    requests: Sequence[tuple[str, GrantRequest | None]],
    **overrides: Any,
) -> tuple[Approval, Grant | None]:
    approval = await store.create(new_approval(quorum=len(requests), **overrides), audit=requested())
    votes = SqlVoteStore(store)
    counting: Callable[[Sequence[Vote]], Tally] = partial(tally, requirement=Requirement(len(requests)))
    for name, request in requests:
        cast = await votes.cast(
            approval.id,
            Vote(name, frozenset(), "api", clock()),
            reason=None,
            audit=AuditEvent(AuditEventKind.VOTED, name, {"via": "api"}),
            tally=counting,
            grant=request,
            make_grant=maker(clock),
        )
    assert cast.decided and cast.approval.status is ApprovalStatus.APPROVED
    return cast.approval, cast.grant


def use_for(grants: SqlGrantStore, clock: ManualClock, **overrides: Any):  # type: ignore[no-untyped-def]
    fields: dict[str, Any] = {
        "agent": "agent-1",
        "server": "payments",
        "tool": "refund",
        "rule": "rules[0] 'payments__*'",
        "policy_revision": "rev-1",
        "arguments_hash": arguments_hash(ARGUMENTS),
        "request_key": "no-open-approval",
        "now": clock(),
    }
    fields.update(overrides)
    return grants.use(**fields)


async def test_the_deciding_vote_makes_the_narrowest_grant_with_its_audit_event(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    approval, grant = await approve_with_grant(
        store,
        clock,
        [
            ("alice", GrantRequest(1800, GrantScope.MATCHING, 4)),
            ("bob", GrantRequest(3600, GrantScope.IDENTICAL, None)),
        ],
    )
    assert grant is not None
    assert (grant.scope, grant.max_calls, grant.created_by) == (GrantScope.IDENTICAL, 4, ("alice", "bob"))
    assert grant.expires_at == clock() + timedelta(minutes=30)
    assert (grant.agent, grant.server, grant.tool, grant.rule, grant.policy_revision) == (
        "agent-1",
        "payments",
        "refund",
        approval.rule,
        "rev-1",
    )
    grants = SqlGrantStore(store)
    assert await grants.get(grant.id) == grant
    events = [record.event for record in await store.audit_trail(approval.id)]
    assert events == ["requested", "voted", "voted", "approved", "granted"]
    assert (await store.verify_audit_chain()).ok


async def test_no_grant_when_one_counted_voter_asked_for_none(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    approval, grant = await approve_with_grant(
        store, clock, [("alice", GrantRequest(1800, GrantScope.MATCHING)), ("bob", None)]
    )
    assert grant is None
    assert await SqlGrantStore(store).list() == []
    assert "granted" not in [record.event for record in await store.audit_trail(approval.id)]


async def test_uses_count_up_to_max_calls_then_stop(store: SqlApprovalStore, clock: ManualClock) -> None:
    _, grant = await approve_with_grant(store, clock, [("alice", GrantRequest(600, GrantScope.IDENTICAL, 3))])
    assert grant is not None
    grants = SqlGrantStore(store)
    used = [await use_for(grants, clock) for _ in range(4)]
    assert [g.used_calls if g else None for g in used] == [1, 2, 3, None]
    stored = await grants.get(grant.id)
    assert stored is not None and stored.state(clock()) == "used up"
    assert await grants.list(active_at=clock()) == []


async def test_a_use_given_back_counts_no_more(store: SqlApprovalStore, clock: ManualClock) -> None:
    _, grant = await approve_with_grant(store, clock, [("alice", GrantRequest(600, GrantScope.IDENTICAL, 2))])
    assert grant is not None
    grants = SqlGrantStore(store)
    assert [g.used_calls if g else None for g in [await use_for(grants, clock) for _ in range(3)]] == [
        1,
        2,
        None,
    ]
    await grants.give_back(grant.id)  # the second call was refused by the grant's budget after all
    again = await use_for(grants, clock)
    assert again is not None and again.used_calls == 2
    for _ in range(3):
        await grants.give_back(grant.id)
    stored = await grants.get(grant.id)
    assert stored is not None and stored.used_calls == 0  # never below zero


async def test_identical_grants_bind_the_arguments_matching_ones_do_not(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    other = arguments_hash({"order": "B-2", "amount": 5})
    await approve_with_grant(store, clock, [("alice", GrantRequest(600, GrantScope.IDENTICAL))])
    grants = SqlGrantStore(store)
    assert await use_for(grants, clock, arguments_hash=other) is None
    assert await use_for(grants, clock) is not None
    _, matching = await approve_with_grant(
        store,
        clock,
        [("alice", GrantRequest(600, GrantScope.MATCHING))],
        arguments={"order": "C-3", "amount": 1},
    )
    assert matching is not None
    used = await use_for(grants, clock, arguments_hash=other)
    assert used is not None and used.id == matching.id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent", "agent-2"),
        ("server", "other"),
        ("tool", "charge"),
        ("rule", "rules[1] 'other'"),
        ("policy_revision", "rev-2"),
    ],
)
async def test_a_grant_reaches_only_its_agent_tool_rule_and_revision(
    store: SqlApprovalStore, clock: ManualClock, field: str, value: str
) -> None:
    await approve_with_grant(store, clock, [("alice", GrantRequest(600, GrantScope.MATCHING))])
    grants = SqlGrantStore(store)
    assert await use_for(grants, clock, **{field: value}) is None
    assert await use_for(grants, clock) is not None


async def test_expiry_follows_the_injected_clock(store: SqlApprovalStore, clock: ManualClock) -> None:
    _, grant = await approve_with_grant(store, clock, [("alice", GrantRequest(600, GrantScope.MATCHING))])
    assert grant is not None
    grants = SqlGrantStore(store)
    clock.advance(timedelta(seconds=599))
    assert await use_for(grants, clock) is not None
    clock.advance(timedelta(seconds=1))
    assert await use_for(grants, clock) is None
    stored = await grants.get(grant.id)
    assert stored is not None and stored.state(clock()) == "expired"


async def test_revocation_is_immediate_once_and_audited(store: SqlApprovalStore, clock: ManualClock) -> None:
    approval, grant = await approve_with_grant(
        store, clock, [("alice", GrantRequest(600, GrantScope.MATCHING))]
    )
    assert grant is not None
    grants = SqlGrantStore(store)
    assert await use_for(grants, clock) is not None
    revoked, first = await grants.revoke(grant.id, by="carol", at=clock())
    again, second = await grants.revoke(grant.id, by="dave", at=clock())
    assert (first, second) == (True, False)
    assert revoked.revoked_by == again.revoked_by == "carol"
    assert revoked.used_calls == 1
    assert await use_for(grants, clock) is None
    assert [record.event for record in await store.audit_trail(approval.id)][-1] == "grant_revoked"
    with pytest.raises(GrantNotFound):
        await grants.revoke("g-nope", by="carol", at=clock())
    assert (await store.verify_audit_chain()).ok


async def test_fifty_racing_calls_on_two_replicas_spend_exactly_max_calls(
    open_store: Callable[[], SqlApprovalStore], clock: ManualClock
) -> None:
    store = open_store()
    _, grant = await approve_with_grant(store, clock, [("alice", GrantRequest(600, GrantScope.MATCHING, 5))])
    assert grant is not None
    replicas = [SqlGrantStore(open_store()), SqlGrantStore(open_store())]
    passed: list[int] = []

    async def call(n: int) -> None:
        used = await use_for(replicas[n % 2], clock)
        if used is not None:
            passed.append(used.used_calls)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for n in range(50):
                group.start_soon(call, n)
    assert sorted(passed) == [1, 2, 3, 4, 5]
    stored = await replicas[0].get(grant.id)
    assert stored is not None and stored.used_calls == 5


async def test_an_open_approval_for_the_exact_call_keeps_the_grant_unused(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    approval, grant = await approve_with_grant(
        store, clock, [("alice", GrantRequest(600, GrantScope.IDENTICAL))]
    )
    assert grant is not None
    grants = SqlGrantStore(store)
    # The approved call's outcome is not delivered yet: its agent coming back attaches to it.
    assert await use_for(grants, clock, request_key=approval.request_key) is None
    for step, to in (
        (ApprovalStatus.APPROVED, ApprovalStatus.RELEASED),
        (ApprovalStatus.RELEASED, ApprovalStatus.COMPLETED),
    ):
        await store.transition(approval.id, expected={step}, to=to, audit=entering(to))
    assert await use_for(grants, clock, request_key=approval.request_key) is None
    assert await store.mark_delivered(approval.id, clock())
    used = await use_for(grants, clock, request_key=approval.request_key)
    assert used is not None and used.used_calls == 1
