"""A policy's rules after loading: validated, compiled, and each carrying the Decision it yields."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.policy.conditions import Check, Condition
from broker.policy.decision import Action, ApprovalRequirement, Decision, RateLimit
from broker.policy.patterns import AgentScope, ToolPattern


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One entry of ``rules``.

    `name` is the rule's ``id`` when it has one, otherwise ``rules[<index>] '<tool pattern>'``;
    `line` is where the rule starts in the policy file. `decision` is built once at load time:
    every call this rule decides gets this same object.
    """

    index: int
    name: str
    id: str | None
    pattern: ToolPattern
    action: Action
    reason: str
    agents: AgentScope | None
    conditions: tuple[Condition, ...]
    rate_limit: RateLimit | None
    approval: ApprovalRequirement | None
    show_first: tuple[str, ...]
    """Top-level argument names an approver reads first (the rule's ``show_first``)."""
    line: int
    decision: Decision = field(repr=False)
    check: Check | None = field(repr=False, compare=False)
    unless: tuple[Condition, ...] = ()
    """Conditions that exempt a call from this rule when they all hold (the rule's ``unless``)."""

    @property
    def tool(self) -> str:
        return self.pattern.text


@dataclass(frozen=True, slots=True)
class HideEntry:
    """One entry of ``hide``; its name is ``hide[<index>] '<pattern>'``."""

    index: int
    name: str
    pattern: ToolPattern
    line: int
    decision: Decision = field(repr=False)
