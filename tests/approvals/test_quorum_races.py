"""Four-eyes approval through the service: racing votes on two replicas, one person on two channels,
denials, and who cannot count. Every backend (the `service` fixture runs SQLite and PostgreSQL)."""

from __future__ import annotations

from functools import partial

import anyio
import pytest

from broker.approvals.model import ApprovalStatus, Approver
from broker.approvals.ports import InvalidTransition
from broker.approvals.service import ApprovalService, NotAllowedToDecide
from broker.approvals.verdict import Approve, Deny
from tests.store.builders import new_approval

from .conftest import CountingReleaser, RecordingListener, ServiceFactory, sqlite_only

pytestmark = pytest.mark.anyio

S = ApprovalStatus
ROUNDS = 5
PEOPLE = [Approver(f"approver-{n}", frozenset({"risk"})) for n in range(5)]


async def hundred_votes(replicas: tuple[ApprovalService, ApprovalService], approval_id: str) -> list[S]:
    """100 simultaneous yes votes from 5 approvers over web, Slack and the API, alternating replicas."""
    returned: list[S] = []

    async def vote(replica: ApprovalService, person: Approver, via: str) -> None:
        try:
            decided = await replica.decide(approval_id, Approve(), approver=person, via=via)
        except InvalidTransition as late:
            returned.append(late.current.status)
        else:
            returned.append(decided.status)

    async with anyio.create_task_group() as group:
        for n in range(100):
            group.start_soon(vote, replicas[n % 2], PEOPLE[n % 5], ("web", "slack", "api")[n % 3])
    return returned


async def test_hundred_votes_from_five_approvers_release_once_with_two_approvers(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    async with service("replica-a") as replica_a, service("replica-b") as replica_b:
        for round_ in range(ROUNDS):
            approval, _ = await replica_a.open(
                new_approval(approvers=("@risk",), quorum=2, arguments={"round": round_})
            )
            with anyio.fail_after(60):
                returned = await hundred_votes((replica_a, replica_b), approval.id)
                await listener.until(partial(released, listener, approval.id), 30)
                async with anyio.create_task_group() as group:
                    group.start_soon(replica_a.sweep)
                    group.start_soon(replica_b.sweep)

            assert len(returned) == 100
            assert releaser.calls_for(approval.id) == 1
            final = await replica_a.store.get(approval.id)
            assert final is not None and final.status is S.COMPLETED
            approvers = final.decided_by.split(", ")  # type: ignore[union-attr]
            assert len(approvers) == len(set(approvers)) == 2
            assert {vote.approver for vote in final.votes} == set(approvers)
            trail = [record.event for record in await replica_a.store.audit_trail(approval.id)]
            assert trail.count("approved") == 1
            assert trail.count("released") == 1


def released(listener: RecordingListener, approval_id: str) -> bool:
    return bool(listener.updates(approval_id, S.COMPLETED))


@sqlite_only
async def test_one_person_on_web_and_slack_counts_once(
    service: ServiceFactory, releaser: CountingReleaser
) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval(approvers=("@risk",), quorum=2))
        alice = Approver("alice", frozenset({"risk"}))
        first = await approvals.decide(approval.id, Approve(), approver=alice, via="web")
        again = await approvals.decide(approval.id, Approve(), approver=alice, via="slack")
        assert first.status is again.status is S.PENDING
        assert [vote.approver for vote in again.votes] == ["alice"]
        decided = await approvals.decide(
            approval.id, Approve(), approver=Approver("bob", frozenset({"risk"})), via="api"
        )
        assert decided.status is S.APPROVED
        assert decided.decided_by == "alice, bob"


@sqlite_only
async def test_any_deny_ends_the_call_at_once(service: ServiceFactory, releaser: CountingReleaser) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval(approvers=("*",), quorum=3))
        await approvals.decide(approval.id, Approve(), approver=Approver("alice"), via="web")
        denied = await approvals.decide(approval.id, Deny("too big"), approver=Approver("bob"), via="api")
        assert denied.status is S.DENIED and denied.decided_by == "bob"
        with pytest.raises(InvalidTransition):
            await approvals.decide(approval.id, Approve(), approver=Approver("carol"), via="web")
        assert releaser.calls_for(approval.id) == 0


@sqlite_only
async def test_slack_only_members_the_agent_and_its_principal_never_count(service: ServiceFactory) -> None:
    async with service(principals={"agent-1": frozenset({"carol"})}) as approvals:
        approval, _ = await approvals.open(new_approval(approvers=("*",), quorum=2))
        member = Approver("slack:U0123", frozenset({"risk"}), identified=False)
        with pytest.raises(NotAllowedToDecide, match="cannot count toward a quorum of 2"):
            await approvals.decide(approval.id, Approve(), approver=member, via="slack")
        for who in ("agent-1", "carol"):
            with pytest.raises(NotAllowedToDecide):
                await approvals.decide(approval.id, Approve(), approver=Approver(who), via="api")
        still = await approvals.store.get(approval.id)
        assert still is not None and still.status is S.PENDING and still.votes == ()
        # A slack-only member may still deny: a denial is decisive on its own.
        denied = await approvals.decide(approval.id, Deny(), approver=member, via="slack")
        assert denied.status is S.DENIED


@sqlite_only
async def test_a_single_approver_rule_is_decided_by_the_first_yes_as_before(service: ServiceFactory) -> None:
    async with service() as approvals:
        approval, _ = await approvals.open(new_approval(approvers=("*",)))
        member = Approver("slack:U0123", identified=False)
        decided = await approvals.decide(approval.id, Approve(), approver=member, via="slack")
        assert decided.status is S.APPROVED and decided.votes == ()
