"""Why a policy decided what it did: every rule it looked at and what became of it.

This is the slow, talkative twin of `Policy.decide`, for ``broker policy explain`` and for
operators reading logs; it is built by `Policy.explain` from the same candidate ranking, so
its decision is always the one `decide` returns.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.policy.decision import Action, Decision
from broker.policy.grants import grant_text
from broker.policy.rules import CompiledRule, HideEntry


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    """The rule that decided the call."""
    OUTRANKED = "outranked"
    """Applies to the call, but a more specific (or earlier) rule decided it."""
    AGENT_NOT_IN_SCOPE = "agent not in scope"
    CONDITION_FAILED = "condition failed"
    NOT_CONSULTED = "not consulted"
    """The tool is hidden, so no rule is consulted."""
    TOOL_MISMATCH = "tool does not match"


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: CompiledRule
    outcome: Outcome
    match: str | None
    """How the tool pattern matched (e.g. ``exact name``), None when it did not."""
    details: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HideTrace:
    entry: HideEntry
    matched: bool


@dataclass(frozen=True, slots=True)
class Explanation:
    tool: str
    server: str | None
    agent: str | None
    arguments: Mapping[str, Any] | None
    decision: Decision
    default: Action
    hides: tuple[HideTrace, ...]
    rules: tuple[RuleTrace, ...]
    """Rules whose pattern matches, most specific first, then all others in file order."""

    @property
    def winner(self) -> CompiledRule | None:
        for trace in self.rules:
            if trace.outcome is Outcome.APPLIED:
                return trace.rule
        return None

    def render(self) -> str:
        lines = [*self._render_call(), "", *self._render_hides(), "", *self._render_rules()]
        return "\n".join(lines)

    def _render_call(self) -> list[str]:
        if self.server:
            call = f"{self.server}__{self.tool} (tool '{self.tool}' on server '{self.server}')"
        else:
            call = self.tool
        decision = self.decision
        lines = [
            f"call:      {call}",
            f"agent:     {self.agent if self.agent is not None else '(not named)'}",
            f"arguments: {_json(self.arguments) if self.arguments is not None else '(none)'}",
            f"decision:  {decision.action} by {decision.rule} (policy revision {decision.revision})",
            f"reason:    {decision.reason}",
        ]
        if decision.rate_limit is not None:
            limit = decision.rate_limit
            lines.append(f"rate limit: {limit.max_calls} calls per {limit.window_seconds:g}s")
        for spend in decision.limits:
            lines.append(f"limit:     {spend.describe()}")
            if self.arguments is not None:
                lines.append(f"           this call {spend.spend_text(self.arguments)}")
        if decision.approval is not None:
            approval = decision.approval
            lines.append(
                f"approval:  times out after {approval.timeout_seconds:g}s (then {approval.on_timeout}); "
                f"approvers: {_approvers(approval.approvers)}; "
                f"channels: {', '.join(approval.channels) or 'none named'}"
            )
            if approval.quorum > 1 or approval.quorum_from:
                groups = f", one of each of {', '.join(approval.quorum_from)}" if approval.quorum_from else ""
                lines.append(
                    f"quorum:    {approval.quorum} distinct approvers{groups}; any deny ends the call"
                )
            lines.extend(f"escalate:  {step.describe()}" for step in approval.escalation)
            if approval.editable:
                lines.append(
                    f"editable:  approvers may change {', '.join(approval.editable)} before approving"
                )
            if approval.grant is not None:
                lines.append(f"grant:     approvers may give a {grant_text(approval.grant)}")
            if approval.hold_budget_seconds is not None:
                lines.append(
                    f"hold:      an agent waits {approval.hold_budget_seconds:g}s at most before the "
                    "'pending approval' answer"
                )
            winner = self.winner
            if winner is not None and winner.show_first:
                lines.append(
                    f"show first: {', '.join(winner.show_first)} (then the rest in the agent's order)"
                )
        return lines

    def _render_hides(self) -> list[str]:
        matched = [trace.entry for trace in self.hides if trace.matched]
        if not matched:
            return [f"hide: no pattern matches ({len(self.hides)} checked)"]
        return [f"hide: {entry.name} (line {entry.line}) matches: the tool is hidden" for entry in matched]

    def _render_rules(self) -> list[str]:
        considered = [trace for trace in self.rules if trace.outcome is not Outcome.TOOL_MISMATCH]
        lines = ["rules naming this tool, most specific first:" if considered else "no rule names this tool"]
        for position, trace in enumerate(considered, start=1):
            rule = trace.rule
            marker = "->" if trace.outcome is Outcome.APPLIED else "  "
            lines.append(
                f" {marker} {position}. {rule.name} (line {rule.line}, {rule.action}): {trace.match}; "
                f"{trace.outcome.upper() if trace.outcome is Outcome.APPLIED else trace.outcome}"
            )
            lines.extend(f"         {detail}" for detail in trace.details)
        others = len(self.rules) - len(considered)
        if others:
            lines.append(
                f"{others} other rule does not match this tool"
                if others == 1
                else f"{others} other rules do not match this tool"
            )
        if self.decision.action is Action.HIDE:
            usage = "not used: the tool is hidden"
        elif self.decision.rule == "default":
            usage = "used: no rule applies"
        else:
            usage = "not used"
        lines.append(f"default: {self.default} ({usage})")
        return lines


def _json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def _approvers(named: tuple[str, ...]) -> str:
    """Who may decide, in words: '*' and an empty list (approvals.default_approvers, '*' unless the
    broker configuration says otherwise) both mean any approver."""
    if not named:
        return "any approver (none named; approvals.default_approvers applies, ['*'] unless configured)"
    if "*" in named:
        return "any approver"
    return ", ".join(named)
