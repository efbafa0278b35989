"""The pure parts of four-eyes approval: the tally of stored votes and who may count toward it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from broker.approvals.eligibility import Eligibility, quorum_refusal, unreachable_quorum
from broker.approvals.model import Approval, ApprovalStatus, Approver, Vote
from broker.approvals.quorum import Requirement, progress_text, tally
from broker.policy.decision import Action, ApprovalRequirement, Decision

AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def vote(name: str, *groups: str) -> Vote:
    return Vote(name, frozenset(groups), "web", AT)


def approval(**changes: object) -> Approval:
    base = Approval(
        id="apv-1",
        status=ApprovalStatus.PENDING,
        agent="trader",
        session_id=None,
        server="exchange",
        tool="place_order",
        upstream_tool="place_order",
        arguments={},
        arguments_hash="0" * 64,
        request_key="0" * 64,
        policy_revision="rev-1",
        rule="rules[0] 'place_order'",
        rule_reason="money",
        approvers=("@risk", "@trading", "carol"),
        channels=(),
        created_at=AT,
        expires_at=AT + timedelta(minutes=5),
        version=1,
        quorum=2,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_two_distinct_people_reach_a_quorum_of_two() -> None:
    assert not tally([vote("alice")], Requirement(2)).reached
    assert tally([vote("alice"), vote("bob")], Requirement(2)).reached


def test_a_person_counts_once_however_many_votes_are_stored() -> None:
    result = tally([vote("alice"), vote("alice"), vote("alice")], Requirement(2))
    assert result.counted == ("alice",)
    assert not result.reached
    assert result.text() == "1 of 2 approvals: alice"


def test_from_groups_need_a_different_member_each() -> None:
    wanted = Requirement(2, ("@risk", "@trading"))
    both = vote("dana", "risk", "trading")
    assert not tally([both], wanted).reached
    # Two risk people still leave trading unrepresented.
    two_risk = tally([vote("alice", "risk"), vote("erin", "risk")], wanted)
    assert not two_risk.reached
    assert two_risk.missing_groups == ("@trading",)
    assert two_risk.text() == "2 of 2 approvals: alice, erin; still needs one of @trading"
    # A person in both groups can cover either, so the matching finds the other way round.
    assert tally([both, vote("alice", "risk")], wanted).reached


def test_extra_approvals_beyond_the_groups_may_come_from_anyone() -> None:
    wanted = Requirement(3, ("@risk",))
    assert not tally([vote("alice", "risk"), vote("bob")], wanted).reached
    assert tally([vote("alice", "risk"), vote("bob"), vote("carol")], wanted).reached
    assert not tally([vote("bob"), vote("carol"), vote("dave")], wanted).reached


def test_votes_that_no_longer_count_are_left_out() -> None:
    result = tally([vote("alice"), vote("bob")], Requirement(2), counts=lambda v: v.approver != "bob")
    assert result.counted == ("alice",)


def test_a_quorum_cannot_be_smaller_than_its_groups() -> None:
    with pytest.raises(ValueError, match="cannot cover"):
        Requirement(1, ("@risk", "@trading"))


def test_progress_text_only_for_quorum_approvals() -> None:
    assert progress_text(approval(quorum=1)) is None
    assert progress_text(approval(votes=(vote("alice", "risk"),))) == "1 of 2 approvals: alice"
    assert (
        progress_text(approval(votes=(vote("alice", "risk"),)), brackets=True) == "1 of 2 approvals (alice)"
    )


def test_the_agent_and_whom_it_acts_for_never_count() -> None:
    rules = Eligibility(principals={"trader": frozenset({"carol"})})
    held = approval(approvers=("*",))
    counts = rules.counts(held, None)
    assert not counts(vote("trader"))
    assert not counts(vote("carol"))
    assert counts(vote("alice"))
    assert rules.refusal(held, Approver("carol"), None) is not None
    assert rules.refusal(held, Approver("trader"), None) is not None


def test_a_slack_only_identity_decides_alone_but_never_counts_in_a_quorum() -> None:
    slack_member = Approver("slack:U123", frozenset({"risk"}), identified=False)
    assert quorum_refusal(slack_member, Requirement(1)) is None
    refusal = quorum_refusal(slack_member, Requirement(2))
    assert refusal is not None and "not tied to a broker approver" in refusal
    assert quorum_refusal(Approver("alice"), Requirement(2)) is None


def test_the_policy_in_force_decides_the_quorum_and_who_counts() -> None:
    rules = Eligibility()
    held = approval()
    narrowed = Decision(
        Action.REQUIRE_APPROVAL,
        "rules[0] 'place_order'",
        "money",
        "rev-2",
        approval=ApprovalRequirement(approvers=("@risk",), quorum=3),
    )
    assert rules.requirement(held, narrowed) == Requirement(3)
    assert rules.requirement(held, None) == Requirement(2)
    # A reload never weakens the quorum of a call already waiting; it may add groups.
    relaxed = replace(narrowed, approval=ApprovalRequirement(quorum=1, quorum_from=("@risk",)))
    assert rules.requirement(held, relaxed) == Requirement(2, ("@risk",))
    counts = rules.counts(held, narrowed)
    assert counts(vote("alice", "risk"))
    assert not counts(vote("carol"))  # named by the held rule, not by the one in force


def test_start_up_check_counts_the_configured_people() -> None:
    people = [("alice", frozenset({"risk"})), ("bob", frozenset({"trading"})), ("carol", frozenset())]
    assert (
        unreachable_quorum(ApprovalRequirement(quorum=2, approvers=("@risk", "@trading")), people, ("*",))
        is None
    )
    problem = unreachable_quorum(
        ApprovalRequirement(quorum=3, approvers=("@risk", "@trading")), people, ("*",)
    )
    assert problem is not None and "alice, bob" in problem
    grouped = ApprovalRequirement(quorum=2, quorum_from=("@risk", "@ops"))
    assert unreachable_quorum(grouped, people, ("*",)) is not None
    assert unreachable_quorum(ApprovalRequirement(), [], ("*",)) is None
