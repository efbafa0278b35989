"""Who may decide a held call, and whose yes counts toward its quorum. Pure: no I/O.

A person may decide an approval when

1. they are not the agent that made the call, nor a person the agent acts for (``acts_for`` in
   broker.yaml), whichever channel they use;
2. the rule that held the call names them (by name, by ``@group``, or ``*``; a rule without
   ``approvers`` uses the broker's default approvers), or an escalation step the call has reached
   names them (see broker.approvals.escalation); and
3. when the policy has been reloaded since and still requires approval for the call, the rule in
   force now names them too: a reload that narrows who may approve applies to calls waiting.

For a quorum (see broker.approvals.quorum) a yes also needs an *identified* person: one the broker
ties to a single approver identity (an approver entry, whichever channel they use). A Slack
user-group member without an entry may decide a single-approver rule, but is never counted beside
an approver who may be the same person. The quorum in force is the held rule's, made stricter
(never weaker) by the current rule when the policy was reloaded and still requires approval: the
larger number, every group of both. A vote counts only while its voter passes 1-3 against the
policy in force at the moment of counting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from broker.approvals.model import Approval, Approver, Vote
from broker.approvals.quorum import Requirement, tally
from broker.policy import Policy
from broker.policy.decision import Action, ApprovalRequirement, Decision

ANY_APPROVER = "*"


@dataclass(frozen=True, slots=True)
class Eligibility:
    default_approvers: tuple[str, ...] = (ANY_APPROVER,)
    principals: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Agent -> the approvers it acts for."""

    def refusal(self, approval: Approval, approver: Approver, current: Decision | None) -> str | None:
        """None when `approver` may decide `approval` (given `current`, the policy's decision on the
        call now, or None without a policy), else the reason they may not."""
        if approver.name == approval.agent:
            return f"{approver.name} is the agent that made this call and cannot approve its own call"
        if approver.name in self.principals.get(approval.agent, ()):
            return f"{approver.name} is who agent {approval.agent} acts for and cannot approve its own call"
        refusal = self.not_named(approver, approval.approvers, approval.rule, also=approval.escalated_to)
        if refusal is not None:
            return refusal
        changed = _changed_requirement(approval, current)
        if changed is not None and current is not None:
            reached = changed.escalation[: approval.escalation_step]
            return self.not_named(
                approver,
                changed.approvers,
                f"{current.rule} (revision {current.revision})",
                also=tuple(name for step in reached for name in step.to),
            )
        return None

    def not_named(
        self, approver: Approver, approvers: Sequence[str], rule: str, *, also: Sequence[str] = ()
    ) -> str | None:
        """`also`: approvers the escalation steps reached so far added (see broker.approvals.escalation)."""
        allowed = (*(approvers or self.default_approvers), *also)
        if named(approver.name, approver.groups, allowed):
            return None
        return f"{approver.name} is not an approver for rule {rule} (approvers: {', '.join(allowed)})"

    def requirement(self, approval: Approval, current: Decision | None) -> Requirement:
        """The quorum in force for `approval`: its rule's, made stricter by the reloaded policy's
        rule (more approvers, more groups) but never weaker, as reloads narrow the approvers."""
        held = Requirement.of(approval)
        changed = _changed_requirement(approval, current)
        if changed is None:
            return held
        groups = tuple(dict.fromkeys((*held.from_groups, *changed.quorum_from)))
        return Requirement(max(held.approvals, changed.quorum, len(groups)), groups)

    def counts(self, approval: Approval, current: Decision | None) -> Callable[[Vote], bool]:
        """Whether a stored yes still counts toward the quorum under the policy in force."""

        def counts(vote: Vote) -> bool:
            voter = Approver(vote.approver, vote.groups)
            return self.refusal(approval, voter, current) is None

        return counts


def quorum_refusal(approver: Approver, requirement: Requirement) -> str | None:
    """Why `approver`'s yes cannot count toward `requirement`, or None."""
    if requirement.is_quorum and not approver.identified:
        return (
            f"{approver.name} is not tied to a broker approver, so their approval cannot count toward "
            f"a quorum of {requirement.approvals} (a Slack user needs an approver entry with slack_user)"
        )
    return None


def named(name: str, groups: Iterable[str], approvers: Sequence[str]) -> bool:
    member_of = frozenset(groups)
    for entry in approvers:
        if entry in (ANY_APPROVER, name):
            return True
        if entry.startswith("@") and entry[1:] in member_of:
            return True
    return False


def unreachable_quorum(
    requirement: ApprovalRequirement,
    people: Iterable[tuple[str, frozenset[str]]],
    default_approvers: Sequence[str],
) -> str | None:
    """Why the configured approvers (name, groups) can never reach `requirement`'s quorum, or None."""
    wanted = Requirement(requirement.quorum, requirement.quorum_from)
    if not wanted.is_quorum:
        return None
    # Approvers that escalation adds may complete a quorum too.
    allowed = (
        *(requirement.approvers or tuple(default_approvers)),
        *(name for step in requirement.escalation for name in step.to),
    )
    eligible = [(name, groups) for name, groups in people if named(name, groups, allowed)]
    at = datetime.fromtimestamp(0, UTC)
    if tally([Vote(name, groups, "config", at) for name, groups in eligible], wanted).reached:
        return None
    needs = f"{wanted.approvals} distinct approvers"
    if wanted.from_groups:
        needs += " including one of each of " + ", ".join(wanted.from_groups)
    return (
        f"quorum needs {needs}, but the approvers configured in broker.yaml for it are "
        f"{', '.join(sorted(name for name, _ in eligible)) or 'none'}"
    )


def unreachable_quorums(
    policy: Policy, people: Iterable[tuple[str, frozenset[str]]], default_approvers: Sequence[str]
) -> list[tuple[int, str]]:
    """(line, ``rule R: why``) for every rule whose quorum the configured approvers cannot reach."""
    everyone = list(people)
    found = []
    for rule in policy.rules:
        if rule.approval is None:
            continue
        problem = unreachable_quorum(rule.approval, everyone, default_approvers)
        if problem is not None:
            found.append((rule.line, f"rule {rule.name}: {problem}"))
    return found


def _changed_requirement(approval: Approval, current: Decision | None) -> ApprovalRequirement | None:
    if (
        current is not None
        and current.action is Action.REQUIRE_APPROVAL
        and current.revision != approval.policy_revision
        and current.approval is not None
    ):
        return current.approval
    return None
