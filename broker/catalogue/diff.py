"""What can change for each known tool when one policy replaces another.

A decision depends on the tool, the calling agent and the call's arguments, so for every
tool the diff asks both policies, for every *audience*, which decisions are possible:

* Audiences are each agent named in either policy's ``agents`` lists, the agents matching
  each glob there (through one sample name the glob matches), and "any other agent" (named
  in neither policy, or not named at all). ``agent=`` narrows this to one agent.
* For one audience a policy gives a *ladder*: the conditional rules that can decide the
  call, most specific first, each with its ``when`` conditions, then the decision for a call
  that meets none of them (an unconditional rule, or the default), plus whether the tool
  is listed. A hidden tool's ladder is its ``hide`` entry.
* A tool is reported for an audience when the two ladders differ in listing, in any
  conditional step (its conditions, action, rule, rate limit or approval settings), or in
  the final decision. Audiences with the same before and after share one row.
* Ladders are compared as written, not solved: a ``when`` threshold moved from 5 to
  5,000,000 is a change even though most calls decide the same. A reviewer should see too
  much rather than too little.
* As a last net, each policy also gets an audience-free ladder that keeps every rule
  matching the tool with its agent scope. If those differ but no audience above shows it
  (agents matching several globs at once), the tool is reported for "agents matched by
  globs" with the full ladders.
* Rules are compared by what they are, not where they sit or what they are called: two
  rules are the same rule when their ``id`` is the same, or when their tool pattern, agent
  scope and conditions are. Inserting a rule above another shifts its positional name
  (``rules[2]`` becomes ``rules[3]``), and renaming a rule changes its ``id``, without
  changing anything an agent would notice, so neither alone is a change.
* Revisions always differ between two policies and reasons are prose: neither is compared.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from broker.catalogue.model import CatalogueTool
from broker.catalogue.report import aligned
from broker.catalogue.untrusted import printable
from broker.policy import Action, ApprovalRequirement, CompiledRule, Decision, Policy, RateLimit
from broker.policy.explanation import Outcome
from broker.policy.grants import grant_json, grant_text
from broker.policy.limits import SpendLimit, limits_json

DIFF_COLUMNS = ("tool", "server", "agents", "before", "after")
COMPARED = ("listed", "conditions", "action", "rule", "rate_limit", "limits", "approval")
EVERY_AGENT: Final = "every agent"
OTHER_AGENTS: Final = "any other agent"
GLOB_AGENTS: Final = "agents matched by globs"


@dataclass(frozen=True, slots=True, eq=False)
class RuleIdentity:
    """Same rule: the same ``id``, or the same tool pattern, agent scope and conditions."""

    id: str | None
    content: tuple[str, ...]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuleIdentity):
            return NotImplemented
        return (self.id is not None and self.id == other.id) or self.content == other.content

    def __hash__(self) -> int:
        # Equality is "id or content", so no field can be hashed; these only meet in equality tests
        return 0


@dataclass(frozen=True, slots=True)
class Audience:
    """Whom a row is about: `agent` is the name the policies are asked with (None: any agent
    that no ``agents`` list names); `label` is how the row says it."""

    label: str
    agent: str | None


@dataclass(frozen=True, slots=True)
class DecisionSnapshot:
    """One decision a policy can make. `rule` is the decision's name for the rule;
    `rule_identity` is what comparisons use (see the module docstring)."""

    action: Action
    rule: str
    rate_limit: RateLimit | None
    approval: ApprovalRequirement | None
    rule_identity: RuleIdentity = field(repr=False)
    limits: tuple[SpendLimit, ...] = ()

    @property
    def key(self) -> tuple[object, ...]:
        return (self.action, self.rule_identity, self.rate_limit, self.limits, self.approval)

    def describe(self) -> str:
        text = f"{self.action.value} by {self.rule}"
        if self.rate_limit is not None:
            text += f", max {self.rate_limit.max_calls}/{_seconds(self.rate_limit.window_seconds)}"
        for limit in self.limits:
            text += f", limit {limit.describe()}"
        if self.approval is not None:
            text += f", timeout {_seconds(self.approval.timeout_seconds)}"
            if self.approval.quorum > 1 or self.approval.quorum_from:
                text += f", quorum {self.approval.quorum}"
                if self.approval.quorum_from:
                    text += f" from {' '.join(self.approval.quorum_from)}"
            for step in self.approval.escalation:
                text += f", escalate {step.describe()}"
            if self.approval.editable:
                text += f", editable {' '.join(self.approval.editable)}"
            if self.approval.grant is not None:
                text += f", {grant_text(self.approval.grant)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        rate_limit = (
            None
            if self.rate_limit is None
            else {"max": self.rate_limit.max_calls, "window": self.rate_limit.window_seconds}
        )
        approval = (
            None
            if self.approval is None
            else {
                "timeout": self.approval.timeout_seconds,
                "on_timeout": self.approval.on_timeout,
                "approvers": list(self.approval.approvers),
                "channels": list(self.approval.channels),
            }
        )
        if (
            self.approval is not None
            and approval is not None
            and (self.approval.quorum > 1 or self.approval.quorum_from)
        ):
            approval["quorum"] = {"approvals": self.approval.quorum, "from": list(self.approval.quorum_from)}
        if self.approval is not None and approval is not None and self.approval.escalation:
            approval["escalate"] = [step.to_json() for step in self.approval.escalation]
        if self.approval is not None and approval is not None and self.approval.editable:
            approval["editable"] = list(self.approval.editable)
        if self.approval is not None and approval is not None and self.approval.grant is not None:
            approval["grant"] = grant_json(self.approval.grant)
        shown: dict[str, Any] = {
            "action": self.action.value,
            "rule": self.rule,
            "rate_limit": rate_limit,
            "approval": approval,
        }
        if self.limits:
            shown["limits"] = limits_json(self.limits)
        return shown


@dataclass(frozen=True, slots=True)
class DecisionStep:
    """A rule that decides only some calls: those meeting `when`, from agents in `agents`
    (None: any agent the ladder is about)."""

    agents: tuple[str, ...] | None
    when: tuple[str, ...]
    decision: DecisionSnapshot

    @property
    def key(self) -> tuple[object, ...]:
        return (self.agents, self.when, self.decision.key)

    def describe(self) -> str:
        scope = [f"agents {list(self.agents)}"] if self.agents is not None else []
        scope += [f"when {condition}" for condition in self.when]
        return f"{' and '.join(scope)}: {self.decision.describe()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "agents": None if self.agents is None else list(self.agents),
            "when": list(self.when),
            **self.decision.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class PossibleDecisions:
    """What one policy can decide for one tool and audience: the conditional steps in the
    order they are tried, then `otherwise`, for calls that meet none of them."""

    listed: bool
    conditional: tuple[DecisionStep, ...]
    otherwise: DecisionSnapshot

    @property
    def action(self) -> Action:
        return self.otherwise.action

    @property
    def rule(self) -> str:
        return self.otherwise.rule

    @property
    def key(self) -> tuple[object, ...]:
        return (self.listed, tuple(step.key for step in self.conditional), self.otherwise.key)

    def describe(self) -> str:
        parts = [step.describe() for step in self.conditional]
        final = self.otherwise.describe()
        parts.append(f"otherwise {final}" if self.conditional else final)
        text = "; ".join(parts)
        if not self.listed and self.otherwise.action is not Action.HIDE:
            text += "; not listed"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "conditional": [step.to_dict() for step in self.conditional],
            **self.otherwise.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class DecisionChange:
    tool: CatalogueTool
    audiences: tuple[Audience, ...]
    old: PossibleDecisions
    new: PossibleDecisions
    every_audience: bool = False

    @property
    def agents(self) -> str:
        """Who the change is for, in words."""
        if self.every_audience:
            return EVERY_AGENT
        return ", ".join(audience.label for audience in self.audiences)

    @property
    def changed(self) -> tuple[str, ...]:
        """Which of ``listed``, ``conditions``, ``action``, ``rule``, ``rate_limit``, ``limits``,
        ``approval`` differ."""
        return tuple(name for name in COMPARED if _compared(self.old, name) != _compared(self.new, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool.to_dict(),
            "agents": self.agents,
            "changed": list(self.changed),
            "old": self.old.to_dict(),
            "new": self.new.to_dict(),
        }


def diff_policies(
    old: Policy, new: Policy, tools: Sequence[CatalogueTool], *, agent: str | None = None
) -> list[DecisionChange]:
    """Every (tool, audiences) whose possible decisions differ between the policies, sorted by
    exposed name; with `agent`, only what changes for that agent."""
    old_view, new_view = _PolicyView(old), _PolicyView(new)
    audiences = [Audience(agent, agent)] if agent is not None else _audiences(old, new)
    changes: list[DecisionChange] = []
    for tool in tools:
        groups: dict[tuple[object, object], list[Audience]] = {}
        ladders: dict[tuple[object, object], tuple[PossibleDecisions, PossibleDecisions]] = {}
        for audience in audiences:
            before, after = old_view.ladder(tool, audience), new_view.ladder(tool, audience)
            if before.key == after.key:
                continue
            pair: tuple[object, object] = (before.key, after.key)
            groups.setdefault(pair, []).append(audience)
            ladders[pair] = (before, after)
        for pair, members in groups.items():
            first, second = ladders[pair]
            everyone = agent is None and len(members) == len(audiences)
            changes.append(DecisionChange(tool, tuple(members), first, second, everyone))
        if agent is None and not groups:
            first, second = old_view.ladder(tool, None), new_view.ladder(tool, None)
            if first.key != second.key:
                changes.append(DecisionChange(tool, (Audience(GLOB_AGENTS, None),), first, second))
    order = {audience.label: index for index, audience in enumerate(audiences)}
    return sorted(
        changes,
        key=lambda change: (
            change.tool.exposed_name,
            change.tool.server,
            change.tool.name,
            min((order.get(audience.label, len(order)) for audience in change.audiences), default=0),
        ),
    )


def render_diff(changes: Sequence[DecisionChange]) -> str:
    """A plain-text table of the changes, or a line saying there are none."""
    if not changes:
        return "No tool decisions change, for any agent or arguments.\n"
    rows = [
        tuple(
            printable(text)
            for text in (
                change.tool.exposed_name,
                change.tool.server,
                change.agents,
                change.old.describe(),
                change.new.describe(),
            )
        )
        for change in changes
    ]
    tools = len({(change.tool.server, change.tool.name) for change in changes})
    noun = "tool changes" if tools == 1 else "tools change"
    return "\n".join([*aligned(DIFF_COLUMNS, rows), f"{tools} {noun}."]) + "\n"


def _audiences(*policies: Policy) -> list[Audience]:
    names: dict[str, Audience] = {}
    for policy in policies:
        for rule in policy.rules:
            if rule.agents is None:
                continue
            for pattern in rule.agents.patterns:
                sample = _sample_agent(pattern)
                if sample is None or sample in names:
                    continue
                label = pattern if sample == pattern else f"agents matching '{pattern}'"
                names[sample] = Audience(label, sample)
    return [*sorted(names.values(), key=lambda audience: audience.label), Audience(OTHER_AGENTS, None)]


def _sample_agent(pattern: str) -> str | None:
    """A name `pattern` matches: itself when it is no glob, else wildcards filled in, or None."""
    if not any(char in pattern for char in "*?["):
        return pattern
    sample = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*":
            continue
        if char == "?":
            sample.append("x")
        elif char == "[":
            end = pattern.find("]", index + 1)
            if end == -1:
                sample.append(char)
                continue
            members = pattern[index:end]
            index = end + 1
            if members.startswith("!"):
                sample.append(next((c for c in "xyz0123456789" if c not in members[1:]), "x"))
            else:
                sample.append(members[0])
        else:
            sample.append(char)
    text = "".join(sample) or "agent"
    return text if fnmatch.fnmatchcase(text, pattern) else None


class _PolicyView:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._identities: dict[str, RuleIdentity] = {rule.name: _rule_identity(rule) for rule in policy.rules}
        self._identities.update(
            {
                f"hide[{index}] '{text}'": RuleIdentity(None, ("hide", text))
                for index, text in enumerate(policy.hidden_patterns)
            }
        )
        self._ranked: dict[tuple[str, str], tuple[Decision | None, tuple[CompiledRule, ...]]] = {}

    def ladder(self, tool: CatalogueTool, audience: Audience | None) -> PossibleDecisions:
        """The possible decisions for `audience`; for None, every rule with its agent scope."""
        hidden, ranked = self._candidates(tool)
        if hidden is not None:
            return PossibleDecisions(False, (), self._snapshot(hidden))
        agent = audience.agent if audience is not None else None
        steps: list[DecisionStep] = []
        otherwise = None
        for rule in ranked:
            scope: tuple[str, ...] | None = None
            if rule.agents is not None:
                if audience is None:
                    scope = rule.agents.patterns
                elif not rule.agents.admits(agent):
                    continue
            when = tuple(condition.describe() for condition in rule.conditions)
            if not when and scope is None:
                otherwise = self._snapshot(rule.decision)
                break
            steps.append(DecisionStep(scope, when, self._snapshot(rule.decision)))
        if otherwise is None:
            otherwise = DecisionSnapshot(
                self._policy.default, "default", None, None, RuleIdentity(None, ("default",))
            )
        listed = self._policy.is_listed(tool.name, server=tool.server, agent=agent)
        return PossibleDecisions(listed, tuple(steps), otherwise)

    def _candidates(self, tool: CatalogueTool) -> tuple[Decision | None, tuple[CompiledRule, ...]]:
        found = self._ranked.get((tool.server, tool.name))
        if found is None:
            explanation = self._policy.explain(tool.name, server=tool.server)
            hidden = explanation.decision if explanation.decision.action is Action.HIDE else None
            ranked = tuple(
                trace.rule for trace in explanation.rules if trace.outcome is not Outcome.TOOL_MISMATCH
            )
            found = self._ranked[(tool.server, tool.name)] = (hidden, ranked)
        return found

    def _snapshot(self, decision: Decision) -> DecisionSnapshot:
        identity = self._identities.get(decision.rule, RuleIdentity(None, (decision.rule,)))
        return DecisionSnapshot(
            decision.action, decision.rule, decision.rate_limit, decision.approval, identity, decision.limits
        )


def _rule_identity(rule: CompiledRule) -> RuleIdentity:
    return RuleIdentity(
        rule.id,
        (
            rule.tool,
            repr(rule.agents.patterns if rule.agents is not None else None),
            *(condition.describe() for condition in rule.conditions),
        ),
    )


def _compared(ladder: PossibleDecisions, name: str) -> object:
    if name == "listed":
        return ladder.listed
    if name == "conditions":
        return tuple(step.key for step in ladder.conditional)
    if name == "rule":
        return ladder.otherwise.rule_identity
    return getattr(ladder.otherwise, name)


def _seconds(value: float) -> str:
    return f"{int(value)}s" if value == int(value) else f"{value}s"
