"""Four-eyes approval: a pure tally of the votes stored for one approval.

A rule may ask for `approvals` distinct approvers (a quorum), optionally with one from each of
several groups (`from_groups`, e.g. ``("@risk", "@trading")``): every listed group needs its own
approver, so one person in both groups covers only one of them, and the rest of the quorum may come
from anyone eligible. The quorum is reached when

* at least `approvals` distinct approvers voted yes and still count (see `counts`), and
* the groups can be matched to distinct ones of them (a bipartite matching, found by augmenting
  paths: quorums are small).

A person counts once however many votes of theirs are stored (the store keeps one per approval and
approver; this module deduplicates again so a tally can never count a name twice). Who counts at all
(the agent, the people it acts for, slack-only identities, approvers the policy in force no longer
names) is `broker.approvals.eligibility`'s answer, passed in as `counts`.

Any deny ends the call at once: denials never reach a tally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from broker.approvals.model import Approval, Vote


@dataclass(frozen=True, slots=True)
class Requirement:
    approvals: int = 1
    from_groups: tuple[str, ...] = ()
    """Entries such as ``@risk``; each needs a different approver who is a member."""

    def __post_init__(self) -> None:
        if self.approvals < 1 or self.approvals < len(self.from_groups):
            raise ValueError(f"a quorum of {self.approvals} cannot cover groups {self.from_groups!r}")

    @property
    def is_quorum(self) -> bool:
        """More than one decision is needed (a single approver's yes is final otherwise)."""
        return self.approvals > 1 or bool(self.from_groups)

    @classmethod
    def of(cls, approval: Approval) -> Requirement:
        return cls(approval.quorum, approval.quorum_from)


@dataclass(frozen=True, slots=True)
class Tally:
    requirement: Requirement
    counted: tuple[str, ...]
    """Distinct approvers whose yes counts, in the order they voted."""
    missing_groups: tuple[str, ...]
    """`from` groups no counted approver can be matched to yet."""

    @property
    def reached(self) -> bool:
        return len(self.counted) >= self.requirement.approvals and not self.missing_groups

    def text(self, *, brackets: bool = False) -> str:
        """``1 of 2 approvals: alice`` (``1 of 2 approvals (alice)`` with `brackets`), followed by
        ``; still needs one of @trading`` while a group has nobody yet."""
        text = f"{len(self.counted)} of {self.requirement.approvals} approvals"
        if self.counted:
            names = ", ".join(self.counted)
            text += f" ({names})" if brackets else f": {names}"
        if self.missing_groups:
            text += "; still needs one of " + " and one of ".join(self.missing_groups)
        return text


def tally(
    votes: Iterable[Vote], requirement: Requirement, *, counts: Callable[[Vote], bool] = lambda _: True
) -> Tally:
    distinct: dict[str, Vote] = {}
    for vote in votes:
        if vote.approver not in distinct and counts(vote):
            distinct[vote.approver] = vote
    counted = tuple(distinct)
    groups = requirement.from_groups
    matched = _match(groups, [distinct[name] for name in counted])
    missing = tuple(group for index, group in enumerate(groups) if index not in matched)
    return Tally(requirement, counted, missing)


def progress(approval: Approval) -> Tally:
    """The tally as stored on the approval (its recorded votes, its rule's quorum)."""
    return tally(approval.votes, Requirement.of(approval))


def progress_text(approval: Approval, *, brackets: bool = False) -> str | None:
    """``1 of 2 approvals: alice`` for a quorum approval; None when its rule asks for one decision."""
    requirement = Requirement.of(approval)
    if not requirement.is_quorum:
        return None
    return progress(approval).text(brackets=brackets)


def _match(groups: Sequence[str], voters: Sequence[Vote]) -> dict[int, int]:
    """Group index -> voter index, a maximum matching of groups to distinct members."""
    owner: dict[int, int] = {}  # voter index -> group index
    for group_index in range(len(groups)):
        _augment(group_index, groups, voters, owner, set())
    return {group: voter for voter, group in owner.items()}


def _augment(
    group_index: int, groups: Sequence[str], voters: Sequence[Vote], owner: dict[int, int], seen: set[int]
) -> bool:
    wanted = groups[group_index].removeprefix("@")
    for voter_index, vote in enumerate(voters):
        if wanted not in vote.groups or voter_index in seen:
            continue
        seen.add(voter_index)
        holder = owner.get(voter_index)
        if holder is None or _augment(holder, groups, voters, owner, seen):
            owner[voter_index] = group_index
            return True
    return False
