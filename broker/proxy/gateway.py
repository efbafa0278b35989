"""The protocol-independent heart of the proxy: every agent request passes through `Gateway.dispatch`.

The endpoints (HTTP, stdio) own framing, sessions and streaming; the gateway owns what a
request means: which tools an agent sees (`broker.proxy.tool_listing`), what the policy says
about a call, and how an allowed call is forwarded (`broker.proxy.forwarding`). Nothing reaches
an upstream except through `_call_tool` or, for a released held call, `Gateway.forward_call`.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from broker.approvals.grants import Grant
from broker.approvals.health import StoreHealth
from broker.approvals.spending import Reservation
from broker.observability.calls import CallCounts, UpstreamLatency
from broker.policy.conditions import with_claims
from broker.policy.decision import Action, Decision
from broker.policy.holder import PolicyHolder
from broker.proxy import handshake
from broker.proxy.agent import AgentContext
from broker.proxy.agent_request import AgentRequest
from broker.proxy.call_results import (
    denied_result,
    error_result,
    hidden_result,
    store_down_result,
    unknown_tool_message,
)
from broker.proxy.change_feed import ChangeFeed
from broker.proxy.checks import CallCheck, PendingCall
from broker.proxy.checks.grants import GrantCheck
from broker.proxy.checks.rate_limit import RateLimitCheck
from broker.proxy.checks.spend import SpendBlocked, SpendCheck, reserve_or_refuse
from broker.proxy.decision_log import DecisionLog
from broker.proxy.forwarding import Forwarder
from broker.proxy.gateway_ports import ApprovalGate, Upstreams
from broker.proxy.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from broker.proxy.pinning import PinGuard
from broker.proxy.ratelimit import RateLimiter
from broker.proxy.tool_listing import ToolListing
from broker.proxy.tool_risks import ToolRisks
from broker.proxy.upstream.base import JsonObject
from broker.proxy.upstream.pool import UpstreamTool

logger = logging.getLogger(__name__)

LIST_CHANGED: JsonObject = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


class Gateway:
    def __init__(
        self,
        *,
        policy: PolicyHolder,
        upstreams: Upstreams,
        rate_limiter: RateLimiter,
        decisions: DecisionLog,
        changes: ChangeFeed,
        approvals: ApprovalGate | None = None,
        call_timeout: float | None = None,
        grants: GrantCheck | None = None,
        spend: SpendCheck | None = None,
    ) -> None:
        # Metrics; plain integers, read by broker.observability at scrape time
        self.call_counts = CallCounts()
        self.upstream_latency = UpstreamLatency()
        self._policy = policy
        self._grants = grants
        self._spend = spend
        self._upstreams = upstreams
        self._checks: tuple[CallCheck, ...] = (
            RateLimitCheck(rate_limiter, counts=self.call_counts, record=self._record_pending),
        )
        self._decisions = decisions
        self._changes = changes
        self._approvals = approvals
        self._store_health = approvals.store_health if approvals is not None else None
        self.tool_risks = ToolRisks()
        self._pins: PinGuard | None = None
        self._listing = ToolListing(policy, upstreams, self.tool_risks)
        self._listing.approvals = approvals
        self._forwarder = Forwarder(upstreams, latency=self.upstream_latency, call_timeout=call_timeout)
        self.forward_call = self._forwarder.call
        """The one door to the upstreams, also used by the approval service to release a held call."""

    # -- wiring ---------------------------------------------------------------------------

    def attach_grants(self, grants: GrantCheck) -> None:
        self._grants = grants

    def attach_spend(self, spend: SpendCheck) -> None:
        self._spend = spend

    def attach_pins(self, pins: PinGuard) -> None:
        self._pins = pins
        self._listing.pins = pins

    def attach_approvals(self, approvals: ApprovalGate) -> None:
        self._approvals = approvals
        self._listing.approvals = approvals
        self._store_health = approvals.store_health
        self.tools_changed()

    # -- handshake ------------------------------------------------------------------------

    def initialize_result(self, params: JsonObject | None) -> JsonObject:
        return handshake.initialize_result(params, tasks=self._approvals is not None)

    def discover_result(self) -> JsonObject:
        return handshake.discover_result(tasks=self._approvals is not None)

    # -- change propagation ---------------------------------------------------------------

    def tools_changed(self) -> None:
        """Upstream tools or the policy changed: re-derive listings and tell every open agent stream."""
        self._listing.changed()
        self.tool_risks.clear()
        self._changes.publish(LIST_CHANGED)

    # -- dispatch -----------------------------------------------------------------------

    async def dispatch(
        self, ctx: AgentContext, method: str, params: JsonObject | None, request: AgentRequest
    ) -> JsonObject:
        if method == "tools/call":
            result = await self._call_tool(ctx, params, request)
            if ctx.modern and "resultType" not in result:
                result["resultType"] = "complete"
            return result
        if method == "tools/list":
            if ctx.modern:
                # The listing depends on the agent and on a policy that can change at any time.
                return {
                    "tools": self._listing.of(ctx.agent),
                    "resultType": "complete",
                    "ttlMs": 0,
                    "cacheScope": "private",
                }
            return {"tools": self._listing.of(ctx.agent)}
        if method == "ping" or method == "logging/setLevel":
            return {}
        if method.startswith("tasks/") and self._approvals is not None and not ctx.modern:
            return await self._approvals.task_request(ctx, method, params)
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")

    async def _call_tool(
        self, ctx: AgentContext, params: JsonObject | None, request: AgentRequest
    ) -> JsonObject:
        if params is None:
            raise RpcError(INVALID_PARAMS, "tools/call needs params with a tool name")
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(INVALID_PARAMS, "tools/call params.name must be a string")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "tools/call params.arguments must be an object")

        health = self._store_health
        if health is not None and not health.up and not await health.recheck():
            return store_down_result()
        tool = self._upstreams.resolve(name)
        if tool is None and self._approvals is not None and self._approvals.owns_tool(name):
            return await self._approvals.call_broker_tool(ctx, name, arguments)
        if tool is None:
            policy = self._policy.current
            server, qualified, bare = name.partition("__")
            hidden = policy.decide(bare, server=server) if qualified else policy.decide(name)
            if hidden.action is Action.HIDE:
                # The same answer as for a hidden tool that exists: what is hidden is not revealed either way.
                self.call_counts.hide += 1
                decision_id = self._decisions.record(
                    hidden, agent=ctx.agent, session=ctx.session, tool=name, server="", arguments=arguments
                )
                return hidden_result(name, hidden, decision_id)
            raise RpcError(INVALID_PARAMS, unknown_tool_message(name, self._upstreams.status()))

        policy = self._policy.current
        decision = policy.decide(
            tool.name,
            server=tool.server,
            agent=ctx.agent,
            arguments=arguments if ctx.claims is None else with_claims(arguments, ctx.claims),
            risk=self.tool_risks.of(tool) if policy.rates_risk else None,
        )
        if self._pins is not None and self._pins.pending:
            decision = (
                self._pins.override(tool, decision, policy.on_definition_change, policy.on_new_tool)
                or decision
            )
        action = decision.action
        if action is Action.ALLOW or action is Action.REQUIRE_APPROVAL:
            if action is Action.ALLOW and isinstance(params.get("task"), dict) and not ctx.modern:
                # An allowed call is forwarded as a plain request, so it cannot be a task; the
                # listing offered tasks only for tools whose every call is held. The spec's answer
                # to a task asked of a tool without task support is -32601.
                raise RpcError(
                    METHOD_NOT_FOUND,
                    f"Tool '{name}' cannot be called as a task through this broker: only calls held "
                    "for human approval run as tasks. Call it without 'task'.",
                )
            call = PendingCall(ctx.agent, ctx.session, tool, arguments, decision)
            for check in self._checks:
                refused = await check.check(call)
                if refused is not None:
                    return refused
            if health is not None and not health.up:
                # Seen down while the checks ran; from here on nothing awaits before forwarding.
                return store_down_result()
            if action is Action.REQUIRE_APPROVAL:
                if self._grants is not None and self._grants.applies(decision):
                    granted = await self._granted(
                        self._grants, health, ctx, tool, arguments, decision, params, request
                    )
                    if granted is not None:
                        return granted
                self.call_counts.require_approval += 1
                return await self._hold(ctx, tool, arguments, decision, params, request)
            reservation = await self._reserve(ctx, tool, arguments, decision)
            if isinstance(reservation, dict):
                return reservation
            assert not isinstance(reservation, SpendBlocked), "only a grant's budget holds a call"
            self.call_counts.allow += 1
            self._record(decision, ctx, tool, arguments, None)
            return await self._forwarder.forward(
                ctx, tool, arguments, params, request.notify, self._settled(reservation)
            )

        if action is Action.HIDE:
            self.call_counts.hide += 1
        else:
            self.call_counts.deny += 1
        decision_id = self._record(decision, ctx, tool, arguments, None)
        if action is Action.HIDE:
            return hidden_result(name, decision, decision_id)
        return denied_result(name, decision, decision_id)

    async def _granted(
        self,
        grants: GrantCheck,
        health: StoreHealth | None,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        params: JsonObject,
        request: AgentRequest,
    ) -> JsonObject | None:
        """The answer to a held call a grant lets through (or the refusal that ends it), or None:
        no grant covers it and a human decides."""
        if health is not None and not health.up:
            # Before spending one of the grant's calls on a call that would be refused.
            return store_down_result()
        grant = await grants.use(ctx.agent, tool.server, tool.name, tool.exposed_name, arguments, decision)
        if grant is None:
            return None
        if health is not None and not health.up and not await health.recheck():
            # Seen down while the grant was spent: the call spent is lost with the store.
            return store_down_result()
        granted = await self._reserve(ctx, tool, arguments, decision, grant.id)
        if isinstance(granted, dict):
            # Refused by the rule's own limits: the grant let nothing through.
            await grants.give_back(grant)
            return granted
        if isinstance(granted, SpendBlocked):
            # Over the grant's budget: a human decides, as without a grant.
            logger.info("grant %s does not cover this call: %s", grant.id, granted.text)
            await grants.give_back(grant)
            return None
        return await self._run_granted(ctx, tool, arguments, decision, params, request, grant, granted)

    async def _run_granted(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        params: JsonObject,
        request: AgentRequest,
        grant: Grant,
        reservation: Reservation | None,
    ) -> JsonObject:
        self.call_counts.granted += 1
        self._record(decision, ctx, tool, arguments, "granted", grant=grant.id)
        if self._approvals is not None and isinstance(params.get("task"), dict) and not ctx.modern:
            # Its client asked for a task: it gets one, which runs the call at once; its spend
            # counts from the start (the task's outcome is not awaited here).
            async with self._settled(reservation):
                return await self._approvals.run_granted_task(ctx, tool, arguments, decision, grant)
        return await self._forwarder.forward(
            ctx, tool, arguments, params, request.notify, self._settled(reservation)
        )

    async def _reserve(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        grant: str | None = None,
    ) -> Reservation | JsonObject | SpendBlocked | None:
        """The call's spend reservation (None: no limits), the refusal to return instead, or (under
        `grant`) the grant budget's refusal."""
        if not decision.limits and grant is None:
            return None  # The plain allowed call's path: no allocation, no await.
        call = PendingCall(ctx.agent, ctx.session, tool, arguments, decision)
        return await reserve_or_refuse(
            self._spend, call, counts=self.call_counts, record=self._record_pending, grant=grant
        )

    def _settled(self, reservation: Reservation | None) -> AbstractAsyncContextManager[None]:
        return nullcontext() if self._spend is None else self._spend.settled(reservation)

    async def _hold(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        params: JsonObject,
        request: AgentRequest,
    ) -> JsonObject:
        if self._approvals is None:
            # Fail closed: a call that needs a human never goes through because nobody is there to ask.
            decision_id = self._record(decision, ctx, tool, arguments, "no_approval_service")
            return error_result(
                f"The call to '{tool.exposed_name}' requires human approval (rule {decision.rule}), "
                "but this broker has no approval service running, so it was not forwarded.",
                decision,
                decision_id,
            )
        self._record(decision, ctx, tool, arguments, "held")
        return await self._approvals.hold(ctx, tool, arguments, decision, params, request)

    def _record_pending(self, call: PendingCall, outcome: str) -> str:
        return self._decisions.record(
            call.decision,
            agent=call.agent,
            session=call.session,
            tool=call.tool.exposed_name,
            server=call.tool.server,
            arguments=call.arguments,
            outcome=outcome,
        )

    def _record(
        self,
        decision: Decision,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: JsonObject,
        outcome: str | None,
        *,
        grant: str | None = None,
    ) -> str:
        return self._decisions.record(
            decision,
            agent=ctx.agent,
            session=ctx.session,
            tool=tool.exposed_name,
            server=tool.server,
            arguments=arguments,
            outcome=outcome,
            grant=grant,
        )
