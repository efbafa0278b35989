"""The tools/list answer: which upstream tools an agent sees, and which it may call as tasks.

A listing depends on the policy revision, the agent and the upstream tools; it is cached under
exactly those, so a policy reload or an upstream's list_changed (`ToolListing.changed`) makes
the next listing fresh without any invalidation by hand.
"""

from __future__ import annotations

from broker.policy import Policy
from broker.policy.holder import PolicyHolder
from broker.proxy.gateway_ports import ApprovalGate, Upstreams
from broker.proxy.pinning import PinGuard
from broker.proxy.tool_risks import ToolRisks
from broker.proxy.upstream.base import JsonObject
from broker.proxy.upstream.pool import UpstreamTool


class ToolListing:
    def __init__(self, policy: PolicyHolder, upstreams: Upstreams, risks: ToolRisks) -> None:
        self._policy = policy
        self._upstreams = upstreams
        self._risks = risks
        self.pins: PinGuard | None = None
        self.approvals: ApprovalGate | None = None
        self._cache: dict[tuple[str, str, int], list[JsonObject]] = {}
        self._generation = 0

    def changed(self) -> None:
        self._generation += 1
        self._cache.clear()

    def of(self, agent: str) -> list[JsonObject]:
        policy = self._policy.current
        key = (policy.revision, agent, self._generation)
        listing = self._cache.get(key)
        if listing is None:
            listing = []
            for tool in self._upstreams.tools():
                risk = self._risks.of(tool) if policy.rates_risk else None
                if not policy.is_listed(tool.name, server=tool.server, agent=agent, risk=risk):
                    continue
                if self.pins is not None and self.pins.hides(
                    tool, policy.on_definition_change, policy.on_new_tool
                ):
                    continue
                if self._runs_as_task(tool, agent, policy, risk):
                    listing.append({**tool.definition, "execution": {"taskSupport": "optional"}})
                else:
                    listing.append(_without_task_support(tool.definition))
            if self.approvals is not None and policy.may_require_approval:
                listing.extend(self.approvals.broker_tools)
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[key] = listing
        return listing

    def _runs_as_task(self, tool: UpstreamTool, agent: str, policy: Policy, risk: str | None) -> bool:
        """Whether the listing offers tasks for this tool: only a call the broker holds becomes
        one, so only a tool whose every call is held is offered as one."""
        if self.approvals is None:
            return False
        return policy.always_requires_approval(tool.name, server=tool.server, agent=agent, risk=risk)


def _without_task_support(definition: JsonObject) -> JsonObject:
    """The upstream's own task support is not relayed: the broker forwards every allowed call as
    a plain request, so it must not invite the client to send tasks for it."""
    execution = definition.get("execution")
    if not isinstance(execution, dict) or "taskSupport" not in execution:
        return definition
    rest = {key: value for key, value in execution.items() if key != "taskSupport"}
    listed = {key: value for key, value in definition.items() if key != "execution"}
    if rest:
        listed["execution"] = rest
    return listed
