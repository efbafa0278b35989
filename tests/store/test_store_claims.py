"""A held call keeps the token claims it was decided with (migration 0017), so re-checks read them."""

from __future__ import annotations

import pytest

from broker.approvals.model import Approval, ApprovalStatus
from broker.policy import Action, Policy, load_policy
from broker.store.sql import SqlApprovalStore

from .builders import S, create, new_approval, requested, walk_to

pytestmark = pytest.mark.anyio

CLAIMS = {
    "sub": "carol",
    "groups": ["traders", "desk-2"],
    "scope": "tools:call trade",
    "tenant": {"id": 7, "region": "eu", "beta": True, "quota": 2.5, "note": None, "name": "café ☕"},
}

POLICY = """
version: "1"
default: deny
rules:
  - tool: refund
    action: require_approval
    when:
      "claims.groups": {contains: traders}
      "args.amount": {lte: 500}
"""


def recheck(policy: Policy, approval: Approval, arguments: dict[str, object] | None = None) -> Action:
    return policy.decide(
        approval.upstream_tool, agent=approval.agent, arguments=approval.as_decided(arguments)
    ).action


async def test_claims_round_trip_through_create_read_list_and_every_transition(
    store: SqlApprovalStore,
) -> None:
    created = await create(store, claims=CLAIMS)
    assert created.claims == CLAIMS
    assert (await store.get(created.id)) == created
    done = await walk_to(store, created, S.COMPLETED)
    assert done.status is ApprovalStatus.COMPLETED and done.claims == CLAIMS
    [listed] = await store.list(limit=10)
    assert listed.claims == CLAIMS


async def test_an_api_key_agents_call_has_no_claims(store: SqlApprovalStore) -> None:
    created = await create(store)
    assert created.claims is None
    assert (await store.get(created.id)) == created


async def test_an_identical_call_attaches_to_the_approval_and_its_claims(store: SqlApprovalStore) -> None:
    first = await create(store, claims=CLAIMS)
    found, created = await store.find_or_create(new_approval(claims=CLAIMS), audit=requested())
    assert not created and found.id == first.id and found.claims == CLAIMS


async def test_the_stored_claims_make_a_recheck_decide_as_the_call_was_held(
    store: SqlApprovalStore,
) -> None:
    policy = load_policy(POLICY)
    held = await store.get((await create(store, arguments={"amount": 120}, claims=CLAIMS)).id)
    assert held is not None
    assert recheck(policy, held) is Action.REQUIRE_APPROVAL
    # An approver's edit is re-decided with the same claims and the edited arguments.
    assert recheck(policy, held, {"amount": 90}) is Action.REQUIRE_APPROVAL
    assert recheck(policy, held, {"amount": 900}) is Action.DENY
    # Without claims (an API-key agent, or a call held before they were kept) they are missing.
    keyed = await create(store, arguments={"amount": 120}, session_id="session-2")
    assert recheck(policy, keyed) is Action.DENY


def test_claims_must_be_a_json_object() -> None:
    with pytest.raises(ValueError, match="claims must be a JSON object"):
        new_approval(claims=["traders"])
