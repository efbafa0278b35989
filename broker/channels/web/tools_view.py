"""The tools page's rows: every upstream tool, what the policy does with it, and how risky it looks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.catalogue import CatalogueError, Risk, classify_tool
from broker.policy import Policy
from broker.policy.explanation import Outcome
from broker.proxy.upstream.pool import ServerStatus, UpstreamTool


@dataclass(frozen=True, slots=True)
class ToolSources:
    """Where the tools page reads the upstreams' tools and what the policy in force says about them."""

    decisions: Callable[[], list[dict[str, Any]]]
    """`Broker.tool_decisions`: one row per tool with action, rule, reason, rate limit."""
    tools: Callable[[], Sequence[UpstreamTool]]
    servers: Callable[[], list[ServerStatus]]
    policy: Callable[[], Policy]
    """The policy in force, for the rules that apply only to some arguments or agents."""


def tool_rows(sources: ToolSources, policy: Policy) -> list[dict[str, Any]]:
    decisions: Mapping[tuple[str, str], dict[str, Any]] = {
        (row["server"], row["tool"]): row for row in sources.decisions()
    }
    rows = []
    for tool in sources.tools():
        decision = decisions.get((tool.server, tool.exposed_name))
        if decision is None:
            continue  # the tool list changed between the two reads; the next load shows it
        try:
            classification = classify_tool({**tool.definition, "name": tool.name}, tool.server)
        except CatalogueError as exc:
            risk, category, why = None, None, f"cannot classify: {exc}"
        else:
            risk, category = classification.risk, classification.category.value
            why = classification.reasons[0] if classification.reasons else ""
        rows.append(
            {
                **decision,
                "risk": risk,
                "category": category,
                "risk_reason": why,
                "sometimes": _conditional_rules(policy, tool, decision["action"]),
            }
        )
    rows.sort(key=lambda row: (row["server"], -(row["risk"] or Risk.LOW).rank, row["tool"]))
    return rows


def _conditional_rules(policy: Policy, tool: UpstreamTool, action: str) -> list[dict[str, str]]:
    """Rules that outrank the one shown when the call's arguments or agent match, e.g. big orders held."""
    found = []
    for trace in policy.explain(tool.name, server=tool.server).rules:
        if trace.outcome is Outcome.APPLIED:
            break
        if trace.outcome not in (Outcome.CONDITION_FAILED, Outcome.AGENT_NOT_IN_SCOPE):
            continue
        rule = trace.rule
        if rule.action.value == action and rule.rate_limit is None:
            continue
        scope = [f"when {condition.describe()}" for condition in rule.conditions]
        if rule.agents is not None:
            scope.append(f"for agents {', '.join(rule.agents.patterns)}")
        found.append({"action": rule.action.value, "scope": " and ".join(scope), "rule": rule.name})
    return found
