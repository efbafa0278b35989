"""What the policy in force says of the upstream tools: the operator's tool table and early warnings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker.policy import Policy
from broker.policy.edits import ToolArguments, schema_properties, unknown_fields
from broker.proxy.tool_risks import ToolRisks
from broker.proxy.upstream.pool import UpstreamTool


def tool_decisions(policy: Policy, tools: Sequence[UpstreamTool], risks: ToolRisks) -> list[dict[str, Any]]:
    """Every upstream tool with what `policy` says about it (without arguments)."""
    rows = []
    for tool in tools:
        risk = risks.of(tool) if policy.rates_risk else None
        decision = policy.decide(tool.name, server=tool.server, risk=risk)
        rows.append(
            {
                "tool": tool.exposed_name,
                "server": tool.server,
                "action": decision.action.value,
                "rule": decision.rule,
                "reason": decision.reason,
                "rate_limit": (
                    {"max": decision.rate_limit.max_calls, "window": decision.rate_limit.window_seconds}
                    if decision.rate_limit
                    else None
                ),
                "listed": policy.is_listed(tool.name, server=tool.server, risk=risk),
            }
        )
    return rows


def unknown_editable_fields(policy: Policy, tools: Sequence[UpstreamTool], policy_path: Path) -> list[str]:
    """Positioned problems for editable fields a known upstream tool does not have."""
    arguments = [
        ToolArguments(tool.server, tool.name, schema_properties(tool.definition.get("inputSchema")))
        for tool in tools
    ]
    found = unknown_fields(policy, arguments)
    return [f"{policy_path}:{line}: {problem}" for line, problem in found]


def tool_schema(tools: Sequence[UpstreamTool], server: str, name: str) -> dict[str, Any] | None:
    for tool in tools:
        if tool.server == server and tool.name == name:
            schema = tool.definition.get("inputSchema")
            return schema if isinstance(schema, dict) else None
    return None
