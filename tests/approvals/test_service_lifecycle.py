"""One approval through ApprovalService on a real store: parking, attaching, deciding, releasing, who may decide."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import InvalidTransition
from broker.approvals.service import TIMEOUT_ACTOR, Approver, NotAllowedToDecide, ReleaseFailed
from broker.approvals.verdict import Approve, Deny, verdict_of
from broker.policy import load_policy
from tests.store.builders import new_approval
from tests.store.conftest import ManualClock

from .conftest import ORDER_RESULT, CountingReleaser, RecordingListener, ServiceFactory, sqlite_only

pytestmark = pytest.mark.anyio

S = ApprovalStatus
ALICE = Approver("alice", frozenset({"trading-leads"}))
BOB = Approver("bob", frozenset({"trading-leads"}))


# -- parking and attaching ------------------------------------------------------------------------


async def test_open_parks_a_pending_approval_and_tells_the_channels(
    service: ServiceFactory, clock: ManualClock, listener: RecordingListener
) -> None:
    async with service() as approvals:
        approval, created = await approvals.open(new_approval(timeout=timedelta(minutes=5)))

        assert created
        assert approval.status is S.PENDING
        assert approval.created_at == clock.now
        assert approval.expires_at == clock.now + timedelta(minutes=5)
        assert await approvals.store.get(approval.id) == approval
        await listener.until(lambda: len(listener.opened) == 1)
        assert listener.opened == [approval]
        trail = await approvals.store.audit_trail(approval.id)
        assert [(r.event, r.actor) for r in trail] == [("requested", "agent-1")]


async def test_repeating_the_identical_call_attaches_to_the_open_approval(service: ServiceFactory) -> None:
    async with service() as approvals:
        first, _ = await approvals.open(new_approval(arguments={"order": "A-17", "amount": 120}))
        # Same call with its keys in another order: canonically identical.
        again, created = await approvals.open(new_approval(arguments={"amount": 120, "order": "A-17"}))

        assert not created
        assert again.id == first.id
        assert await approvals.store.pending_count() == 1
        assert [r.event for r in await approvals.store.audit_trail(first.id)] == ["requested"]


async def test_a_different_call_gets_its_own_approval(service: ServiceFactory) -> None:
    async with service() as approvals:
        first, _ = await approvals.open(new_approval())
        differences: list[dict[str, object]] = [
            {"arguments": {"order": "A-17", "amount": 121}},
            {"agent": "agent-2"},
            {"tool": "payments__chargeback"},
        ]
        for difference in differences:
            other, created = await approvals.open(new_approval(**difference))
            assert created, difference
            assert other.id != first.id

        assert await approvals.store.pending_count() == 1 + len(differences)


async def test_a_new_policy_revision_asks_again(service: ServiceFactory) -> None:
    async with service() as approvals:
        first, _ = await approvals.open(new_approval(policy_revision="rev-1"))
        second, created = await approvals.open(new_approval(policy_revision="rev-2"))

        assert created
        assert second.id != first.id
        assert second.policy_revision == "rev-2"
        # Left pending, the first could be approved too and reach the upstream with nobody waiting.
        superseded = await approvals.store.get(first.id)
        assert superseded is not None and superseded.status is S.CANCELLED
        assert (superseded.decided_by, superseded.decided_via) == ("policy", "policy")
        assert superseded.decision_reason is not None and "rev-2" in superseded.decision_reason
        # Repeats under the new revision attach to the new approval.
        third, created_again = await approvals.open(new_approval(policy_revision="rev-2"))
        assert (third.id, created_again) == (second.id, False)


async def test_a_decided_call_keeps_its_outcome_across_a_policy_revision(service: ServiceFactory) -> None:
    async with service() as approvals:
        first, _ = await approvals.open(new_approval(policy_revision="rev-1"))
        await approvals.decide(first.id, Deny("no"), approver=ALICE, via="web")

        attached, created = await approvals.open(new_approval(policy_revision="rev-2"))

        assert not created
        assert (attached.id, attached.status) == (first.id, S.DENIED)


async def test_an_undelivered_outcome_is_handed_out_until_delivered_then_the_call_starts_over(
    service: ServiceFactory,
) -> None:
    async with service() as approvals:
        first, _ = await approvals.open(new_approval())
        await approvals.decide(first.id, Deny("not today"), approver=ALICE, via="slack")

        attached, created = await approvals.open(new_approval())
        assert not created
        assert attached.id == first.id and attached.status is S.DENIED

        assert await approvals.mark_delivered(attached, actor="agent-1")
        assert not await approvals.mark_delivered(attached, actor="agent-1")

        fresh, created = await approvals.open(new_approval())
        assert created
        assert fresh.id != first.id and fresh.status is S.PENDING


async def test_repeating_a_call_after_its_deadline_reports_it_expired(
    service: ServiceFactory, clock: ManualClock
) -> None:
    async with service() as approvals:
        first, _ = await approvals.open(new_approval(timeout=timedelta(minutes=5)))
        clock.advance(timedelta(minutes=5, seconds=1))

        again, created = await approvals.open(new_approval(timeout=timedelta(minutes=5)))

        assert not created
        assert again.id == first.id
        assert again.status is S.EXPIRED and again.decided_by == TIMEOUT_ACTOR


# -- deciding and releasing -------------------------------------------------------------------------


async def test_approve_releases_the_call_once_and_completes_with_the_upstream_result(
    service: ServiceFactory, clock: ManualClock, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval())
        clock.advance(timedelta(seconds=30))

        decided = await approvals.decide(approval.id, Approve("ok"), approver=ALICE, via="api")

        assert decided.status is S.APPROVED
        assert (decided.decided_by, decided.decided_at, decided.decided_via, decided.decision_reason) == (
            "alice",
            clock.now,
            "api",
            "ok",
        )
        with anyio.fail_after(10):
            finished = await approvals.wait(approval.id, 10)
        assert finished.status is S.COMPLETED
        assert finished.result == ORDER_RESULT
        assert finished.released_by == "replica-a"
        [released] = releaser.calls
        assert released.id == approval.id and released.status is S.RELEASED
        assert released.arguments == approval.arguments and released.upstream_tool == "refund"
        trail = await approvals.store.audit_trail(approval.id)
        assert [r.event for r in trail] == ["requested", "approved", "released", "completed"]

        # A later sweep finds nothing left to release.
        await approvals.sweep()
        assert len(releaser.calls) == 1
        await listener.until(lambda: bool(listener.updates(approval.id, S.COMPLETED)))
        assert [a.status for a in listener.updated] == [S.APPROVED, S.RELEASED, S.COMPLETED]


async def test_deny_records_the_reason_and_never_reaches_the_upstream(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval())

        denied = await approvals.decide(approval.id, Deny("price looks wrong"), approver=BOB, via="web")

        assert denied.status is S.DENIED
        assert (denied.decided_by, denied.decided_via, denied.decision_reason) == (
            "bob",
            "web",
            "price looks wrong",
        )
        with anyio.fail_after(5):
            assert await approvals.wait(approval.id, 5) == denied
        await approvals.sweep()
        assert releaser.calls == []
        trail = await approvals.store.audit_trail(approval.id)
        assert [(r.event, r.actor, dict(r.details)) for r in trail][1:] == [
            ("denied", "bob", {"via": "web", "reason": "price looks wrong"})
        ]


async def test_a_second_decision_is_refused_and_says_who_decided_when(
    service: ServiceFactory, clock: ManualClock, releaser: CountingReleaser
) -> None:
    async with service() as approvals:
        to_approve, _ = await approvals.open(new_approval(arguments={"order": "approve-me"}))
        to_deny, _ = await approvals.open(new_approval(arguments={"order": "deny-me"}))
        clock.advance(timedelta(seconds=12))
        await approvals.decide(to_approve.id, Approve(), approver=ALICE, via="slack")
        await approvals.decide(to_deny.id, Deny(), approver=ALICE, via="slack")
        decided_at = clock.now
        clock.advance(timedelta(seconds=3))

        for approval in (to_approve, to_deny):
            for second_approves in (True, False):
                with pytest.raises(InvalidTransition) as refused:
                    await approvals.decide(approval.id, verdict_of(second_approves), approver=BOB, via="api")
                assert refused.value.current.decided_by == "alice"
                assert refused.value.current.decided_at == decided_at
                assert refused.value.current.decided_via == "slack"
                assert f"decided by alice at {decided_at.isoformat()}" in str(refused.value)

        with anyio.fail_after(10):
            assert (await approvals.wait(to_approve.id, 10)).status is S.COMPLETED
        assert [call.id for call in releaser.calls] == [to_approve.id]
        for approval, decision in ((to_approve, "approved"), (to_deny, "denied")):
            events = [r.event for r in await approvals.store.audit_trail(approval.id)]
            assert [e for e in events if e in ("approved", "denied")] == [decision]


@sqlite_only
async def test_an_upstream_that_cannot_take_the_call_fails_the_approval(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    releaser.failure = ReleaseFailed("upstream 'payments' is unavailable")
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval())
        await approvals.decide(approval.id, Approve(), approver=ALICE, via="api")

        with anyio.fail_after(10):
            failed = await approvals.wait(approval.id, 10)

        assert failed.status is S.FAILED
        assert failed.result is not None and failed.result["isError"] is True
        assert "upstream 'payments' is unavailable" in failed.result["content"][0]["text"]
        assert len(releaser.calls) == 1
        [event] = [r for r in await approvals.store.audit_trail(approval.id) if r.event == "failed"]
        assert dict(event.details) == {"error": "upstream 'payments' is unavailable"}


@sqlite_only
async def test_a_releaser_crash_still_ends_the_approval(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    releaser.failure = KeyError("boom")
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval())
        await approvals.decide(approval.id, Approve(), approver=ALICE, via="api")

        with anyio.fail_after(10):
            failed = await approvals.wait(approval.id, 10)

        assert failed.status is S.FAILED
        assert failed.result is not None
        assert "internal error while forwarding" in failed.result["content"][0]["text"]


@sqlite_only
async def test_a_wait_without_an_outcome_returns_the_approval_as_it_stands(service: ServiceFactory) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval())
        with anyio.fail_after(5):
            assert (await approvals.wait(approval.id, 0.01)).status is S.PENDING


# -- who may decide -----------------------------------------------------------------------------------


@sqlite_only
async def test_the_agent_cannot_approve_its_own_call(service: ServiceFactory) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval(agent="trader", approvers=("trader", "*")))

        assert "cannot approve its own call" in (approvals.may_decide(approval, Approver("trader")) or "")
        with pytest.raises(NotAllowedToDecide, match="trader is the agent"):
            await approvals.decide(approval.id, Approve(), approver=Approver("trader"), via="api")
        assert (await approvals.store.get(approval.id)) == approval


@sqlite_only
async def test_named_and_group_approvers(service: ServiceFactory) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval(approvers=("carol", "@trading-leads")))

        assert approvals.may_decide(approval, Approver("carol")) is None
        assert approvals.may_decide(approval, Approver("dave", frozenset({"trading-leads", "ops"}))) is None
        refusal = approvals.may_decide(approval, Approver("erin", frozenset({"ops"})))
        assert refusal is not None
        assert "erin is not an approver" in refusal and "carol, @trading-leads" in refusal
        # A group name is not a person: someone literally called "trading-leads" is not in the group.
        assert approvals.may_decide(approval, Approver("trading-leads")) is not None

        with pytest.raises(NotAllowedToDecide, match="erin is not an approver"):
            await approvals.decide(
                approval.id, Deny(), approver=Approver("erin", frozenset({"ops"})), via="api"
            )
        assert (await approvals.store.get(approval.id)) == approval
        decided = await approvals.decide(
            approval.id, Deny(), approver=Approver("dave", frozenset({"trading-leads"})), via="api"
        )
        assert decided.decided_by == "dave"


@sqlite_only
async def test_without_approvers_on_the_rule_the_defaults_apply(service: ServiceFactory) -> None:
    async with service() as anyone:
        approval, _ = await anyone.open(new_approval(approvers=()))
        assert anyone.may_decide(approval, Approver("zed")) is None
        assert anyone.may_decide(approval, Approver("agent-1")) is not None

    async with service("replica-b", default_approvers=("@ops",)) as ops_only:
        stored = await ops_only.store.get(approval.id)
        assert stored is not None
        assert ops_only.may_decide(stored, Approver("olga", frozenset({"ops"}))) is None
        assert "(approvers: @ops)" in (ops_only.may_decide(stored, Approver("zed")) or "")


@sqlite_only
async def test_whom_the_agent_acts_for_cannot_approve_its_call(service: ServiceFactory) -> None:
    async with service(principals={"trading-bot": frozenset({"alice"})}) as approvals:
        approval, _ = await approvals.open(new_approval(agent="trading-bot"))

        with pytest.raises(NotAllowedToDecide, match="alice is who agent trading-bot acts for"):
            await approvals.decide(approval.id, Approve(), approver=ALICE, via="slack")
        decided = await approvals.decide(approval.id, Approve(), approver=BOB, via="slack")
        assert decided.decided_by == "bob"


# -- the policy in force when the human decides ---------------------------------------------------------

APPROVERS_POLICY = """
version: "1"
default: deny
rules:
  - tool: refund
    action: require_approval
    approvers: [{approvers}]
"""


@sqlite_only
async def test_a_reload_that_narrows_the_approvers_applies_to_calls_already_waiting(
    service: ServiceFactory,
) -> None:
    policy = load_policy(APPROVERS_POLICY.format(approvers='"*"'))
    async with service(policy=lambda: policy) as approvals:
        approval, _ = await approvals.open(
            new_approval(tool="refund", upstream_tool="refund", approvers=(), policy_revision=policy.revision)
        )
        policy = load_policy(APPROVERS_POLICY.format(approvers='"@risk"'))

        erin = Approver("erin", frozenset({"ops"}))
        with pytest.raises(NotAllowedToDecide, match=r"erin is not an approver for rule rules\[0\]"):
            await approvals.decide(approval.id, Approve(), approver=erin, via="api")
        decided = await approvals.decide(
            approval.id, Approve(), approver=Approver("rita", frozenset({"risk"})), via="api"
        )
        assert decided.status is S.APPROVED


@sqlite_only
async def test_a_call_the_policy_now_denies_can_only_be_denied(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    policy = load_policy(APPROVERS_POLICY.format(approvers='"*"'))
    async with service(policy=lambda: policy) as approvals:
        approval, _ = await approvals.open(
            new_approval(tool="refund", upstream_tool="refund", policy_revision=policy.revision)
        )
        policy = load_policy('{"version": "1", "default": "deny"}')

        with pytest.raises(NotAllowedToDecide, match="now denies this call"):
            await approvals.decide(approval.id, Approve(), approver=ALICE, via="api")
        denied = await approvals.decide(approval.id, Deny(), approver=ALICE, via="api")
        assert denied.status is S.DENIED
        assert releaser.calls == []


# -- an approved call whose upstream is not there yet ---------------------------------------------------


@sqlite_only
async def test_an_approved_call_waits_for_its_upstream_to_connect(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    releaser.upstream_connected = False
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval())
        await approvals.decide(approval.id, Approve(), approver=ALICE, via="api")
        await approvals.sweep()

        assert (await approvals.store.get(approval.id)).status is S.APPROVED  # type: ignore[union-attr]
        assert releaser.calls == []

        releaser.upstream_connected = True
        await approvals.sweep()
        with anyio.fail_after(10):
            done = await approvals.wait(approval.id, 10)
        assert done.status is S.COMPLETED
        assert releaser.calls_for(approval.id) == 1


@sqlite_only
async def test_an_approved_call_whose_upstream_stays_away_fails_without_being_forwarded(
    service: ServiceFactory, releaser: CountingReleaser, clock: ManualClock
) -> None:
    releaser.upstream_connected = False
    async with service(stale_release_after=timedelta(minutes=15)) as approvals:
        approval, _ = await approvals.open(new_approval())
        await approvals.decide(approval.id, Approve(), approver=ALICE, via="api")
        clock.advance(timedelta(minutes=14))
        await approvals.sweep()
        assert (await approvals.store.get(approval.id)).status is S.APPROVED  # type: ignore[union-attr]

        clock.advance(timedelta(minutes=1))
        await approvals.sweep()

        failed = await approvals.store.get(approval.id)
        assert failed is not None and failed.status is S.FAILED
        assert failed.result is not None and "stayed unreachable" in failed.result["content"][0]["text"]
        assert releaser.calls == []


@sqlite_only
async def test_a_release_that_never_answers_ends_outcome_unknown_before_another_replica_calls_it_stale(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    releaser.hang = anyio.Event()
    async with service(stale_release_after=timedelta(milliseconds=250)) as approvals:
        approval, _ = await approvals.open(new_approval())
        await approvals.decide(approval.id, Approve(), approver=ALICE, via="api")

        with anyio.fail_after(10):
            unknown = await approvals.wait(approval.id, 10)

        assert unknown.status is S.OUTCOME_UNKNOWN
        assert unknown.result is not None
        assert unknown.result["content"][0]["text"] == "no answer within 0.2 s"
        assert releaser.calls_for(approval.id) == 1
        [event] = [r for r in await approvals.store.audit_trail(approval.id) if r.event == "outcome_unknown"]
        assert dict(event.details) == {"error": "release timed out"}
