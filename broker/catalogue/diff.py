"""What changes for each known tool when one policy replaces another.

Both policies are asked the questions the gateway asks: is the tool listed, and what is the
decision for a call? A tool is reported when its listing, action, deciding rule, rate limit
or approval settings differ.

* Rules are compared by what they are, not where they sit: the rule's ``id`` if it has
  one, otherwise its tool pattern, agent scope and conditions. Inserting a rule above
  another shifts its positional name (``rules[2]`` becomes ``rules[3]``) without changing
  anything an agent would notice, so that alone is not a change.
* Calls are judged without arguments, so a rule whose ``when`` conditions need particular
  arguments does not apply here; the decision shown is the one a call matching no
  condition would get.
* Revisions always differ between two policies and reasons are prose: neither is compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.catalogue.model import CatalogueTool
from broker.catalogue.report import aligned
from broker.catalogue.untrusted import printable
from broker.policy import Action, ApprovalRequirement, Policy, RateLimit

DIFF_COLUMNS = ("tool", "server", "before", "after")
COMPARED = ("listed", "action", "rule", "rate_limit", "approval")

RuleIdentity = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DecisionSnapshot:
    """What one policy says about one tool. `rule` is the decision's name for the rule;
    `rule_identity` is what comparisons use (see the module docstring)."""

    listed: bool
    action: Action
    rule: str
    rate_limit: RateLimit | None
    approval: ApprovalRequirement | None
    rule_identity: RuleIdentity = field(repr=False)

    def describe(self) -> str:
        text = f"{self.action.value} by {self.rule}"
        if self.rate_limit is not None:
            text += f", max {self.rate_limit.max_calls}/{_seconds(self.rate_limit.window_seconds)}"
        if self.approval is not None:
            text += f", timeout {_seconds(self.approval.timeout_seconds)}"
        if not self.listed and self.action is not Action.HIDE:
            text += ", not listed"
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
        return {
            "listed": self.listed,
            "action": self.action.value,
            "rule": self.rule,
            "rate_limit": rate_limit,
            "approval": approval,
        }


@dataclass(frozen=True, slots=True)
class DecisionChange:
    tool: CatalogueTool
    old: DecisionSnapshot
    new: DecisionSnapshot

    @property
    def changed(self) -> tuple[str, ...]:
        """Which of ``listed``, ``action``, ``rule``, ``rate_limit``, ``approval`` differ."""
        return tuple(name for name in COMPARED if _compared(self.old, name) != _compared(self.new, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool.to_dict(),
            "changed": list(self.changed),
            "old": self.old.to_dict(),
            "new": self.new.to_dict(),
        }


def diff_policies(
    old: Policy, new: Policy, tools: Sequence[CatalogueTool], *, agent: str | None = None
) -> list[DecisionChange]:
    """The tools whose decision differs between the policies for `agent`, sorted by exposed name."""
    old_view, new_view = _PolicyView(old), _PolicyView(new)
    changes = []
    for tool in tools:
        change = DecisionChange(tool, old_view.snapshot(tool, agent), new_view.snapshot(tool, agent))
        if change.changed:
            changes.append(change)
    return sorted(
        changes, key=lambda change: (change.tool.exposed_name, change.tool.server, change.tool.name)
    )


def render_diff(changes: Sequence[DecisionChange]) -> str:
    """A plain-text table of the changes, or a line saying there are none."""
    if not changes:
        return "No tool decisions change.\n"
    rows = [
        tuple(
            printable(text)
            for text in (
                change.tool.exposed_name,
                change.tool.server,
                change.old.describe(),
                change.new.describe(),
            )
        )
        for change in changes
    ]
    noun = "tool changes" if len(changes) == 1 else "tools change"
    return "\n".join([*aligned(DIFF_COLUMNS, rows), f"{len(changes)} {noun}."]) + "\n"


class _PolicyView:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._identities: dict[str, RuleIdentity] = {
            rule.name: (
                ("id", rule.id)
                if rule.id is not None
                else (
                    "rule",
                    rule.tool,
                    repr(rule.agents.patterns if rule.agents is not None else None),
                    *(condition.describe() for condition in rule.conditions),
                )
            )
            for rule in policy.rules
        }
        self._identities.update(
            {f"hide[{index}] '{text}'": ("hide", text) for index, text in enumerate(policy.hidden_patterns)}
        )

    def snapshot(self, tool: CatalogueTool, agent: str | None) -> DecisionSnapshot:
        decision = self._policy.decide(tool.name, server=tool.server, agent=agent)
        listed = self._policy.is_listed(tool.name, server=tool.server, agent=agent)
        identity = self._identities.get(decision.rule, (decision.rule,))
        return DecisionSnapshot(
            listed, decision.action, decision.rule, decision.rate_limit, decision.approval, identity
        )


def _compared(snapshot: DecisionSnapshot, name: str) -> object:
    return snapshot.rule_identity if name == "rule" else getattr(snapshot, name)


def _seconds(value: float) -> str:
    return f"{int(value)}s" if value == int(value) else f"{value}s"
