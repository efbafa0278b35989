"""The protocol-independent heart of the proxy: every agent request passes through `Gateway.dispatch`.

The endpoints (HTTP, stdio) own framing, sessions and streaming; the gateway owns what a
request means: which tools an agent sees, what the policy says about a call, and how an
allowed call is forwarded. Nothing reaches an upstream except through `_call_tool`.

Every upstream answer to ``tools/call``, for an allowed call or a released held one, leaves
through `Gateway.forward_call`, which checks it against the CallToolResult shape of the
version that upstream negotiated (`broker.proxy.result_shape`). A malformed one is never passed
on: it raises `MalformedResult`, which an allowed call turns into an error result saying the
call may have run upstream, and a release into a ``failed`` approval.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from broker import __version__
from broker.approvals.grants import Grant
from broker.approvals.health import StoreHealth
from broker.approvals.spending import Reservation
from broker.observability.calls import CallCounts, UpstreamLatency
from broker.policy import Policy
from broker.policy.conditions import with_claims
from broker.policy.decision import Action, Decision
from broker.policy.holder import PolicyHolder
from broker.proxy.agent_request import AgentRequest, Notify
from broker.proxy.call_results import (
    denied_result,
    error_result,
    hidden_result,
    store_down_result,
    unknown_tool_message,
    upstream_failure_result,
)
from broker.proxy.change_feed import ChangeFeed
from broker.proxy.checks import CallCheck, PendingCall
from broker.proxy.checks.grants import GrantCheck
from broker.proxy.checks.rate_limit import RateLimitCheck
from broker.proxy.checks.spend import SpendBlocked, SpendCheck, reserve_or_refuse
from broker.proxy.decision_log import DecisionLog
from broker.proxy.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from broker.proxy.pinning import PinGuard
from broker.proxy.ratelimit import RateLimiter
from broker.proxy.result_shape import tool_result_problem
from broker.proxy.tool_risks import ToolRisks
from broker.proxy.upstream.base import (
    JsonObject,
    MalformedResult,
    UpstreamLost,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.pool import ServerStatus, UpstreamTool

logger = logging.getLogger(__name__)

SERVER_NAME = "mcp-approval-broker"
SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"
LIST_CHANGED: JsonObject = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}

Claims = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AgentContext:
    agent: str
    session: str
    """The key rate limits are counted under: the MCP session, or the agent itself on the stateless era."""
    modern: bool = False
    claims: Claims | None = None
    """The verified access token's claims (None for API keys): `claims.` paths in `when` read them."""
    subject_token: str | None = field(default=None, repr=False)
    """The verified access token itself (None for API keys): only token exchange reads it."""


class Upstreams(Protocol):
    """What the gateway needs from the upstream pool."""

    def tools(self) -> Any: ...

    def resolve(self, exposed_name: str) -> UpstreamTool | None: ...

    def status(self) -> Sequence[ServerStatus]: ...

    def protocol_version(self, server: str) -> str | None: ...

    async def call_tool(
        self,
        tool: UpstreamTool,
        arguments: dict[str, Any] | None,
        *,
        meta: dict[str, Any] | None = None,
        on_notification: Callable[[JsonObject], Awaitable[None]] | None = None,
        timeout: float | None = None,
        caller: UpstreamCaller | None = None,
    ) -> JsonObject: ...


class ApprovalGate(Protocol):
    """Where `require_approval` calls wait for a human (implemented by `broker.proxy.held_calls`)."""

    @property
    def store_health(self) -> StoreHealth:
        """No call is forwarded while it is down (fail closed); see broker.approvals.health."""
        ...

    @property
    def broker_tools(self) -> list[JsonObject]:
        """The broker's own tools (check on or withdraw a held call), listed when calls may be held."""
        ...

    def owns_tool(self, name: str) -> bool: ...

    async def call_broker_tool(
        self, ctx: AgentContext, name: str, arguments: dict[str, Any]
    ) -> JsonObject: ...

    async def hold(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        params: JsonObject,
        request: AgentRequest,
    ) -> JsonObject:
        """Returns the agent's CallToolResult (or a CreateTaskResult for task-augmented calls).

        A request the agent withdraws while it waits withdraws the approval too."""
        ...

    async def run_granted_task(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        grant: Grant,
    ) -> JsonObject:
        """The CreateTaskResult for a task-augmented call a grant let through; the task runs it now."""
        ...

    async def task_request(self, ctx: AgentContext, method: str, params: JsonObject | None) -> JsonObject: ...


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
        self._call_timeout = call_timeout
        # Upstream connections are shared by all agents, so agents' progress tokens are
        # replaced by broker-unique ones on the way up and restored on the way down.
        self._token_prefix = f"broker-{os.urandom(3).hex()}-"
        self._token_counter = itertools.count(1)
        self._listing_cache: dict[tuple[str, str, int], list[JsonObject]] = {}
        self._tools_generation = 0
        self.tool_risks = ToolRisks()
        self._pins: PinGuard | None = None

    # -- capabilities -------------------------------------------------------------------

    def capabilities(self, *, modern: bool = False) -> JsonObject:
        capabilities: JsonObject = {"tools": {"listChanged": True}}
        if self._approvals is not None and not modern:
            # Tasks exist only in the 2025-11-25 handshake era; held calls can be awaited as tasks.
            capabilities["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
        return capabilities

    def attach_grants(self, grants: GrantCheck) -> None:
        self._grants = grants

    def attach_spend(self, spend: SpendCheck) -> None:
        self._spend = spend

    def attach_pins(self, pins: PinGuard) -> None:
        self._pins = pins

    def attach_approvals(self, approvals: ApprovalGate) -> None:
        self._approvals = approvals
        self._store_health = approvals.store_health
        self.tools_changed()

    @staticmethod
    def server_info() -> JsonObject:
        return {"name": SERVER_NAME, "version": __version__}

    def initialize_result(self, params: JsonObject | None) -> JsonObject:
        """The handshake answer: the client's version when we speak it, else our newest handshake version."""
        requested = (params or {}).get("protocolVersion")
        version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        return {
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": self.server_info(),
            "instructions": "Tool calls pass through a policy gateway; some calls wait for human approval.",
        }

    def discover_result(self) -> JsonObject:
        """The 2026-07-28 replacement for the handshake."""
        return {
            "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
            "capabilities": self.capabilities(modern=True),
            "resultType": "complete",
            "_meta": {SERVER_INFO_META_KEY: self.server_info()},
        }

    # -- change propagation ---------------------------------------------------------------

    def tools_changed(self) -> None:
        """Upstream tools or the policy changed: re-derive listings and tell every open agent stream."""
        self._tools_generation += 1
        self._listing_cache.clear()
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
                    "tools": self.list_tools(ctx.agent),
                    "resultType": "complete",
                    "ttlMs": 0,
                    "cacheScope": "private",
                }
            return {"tools": self.list_tools(ctx.agent)}
        if method == "ping" or method == "logging/setLevel":
            return {}
        if method.startswith("tasks/") and self._approvals is not None and not ctx.modern:
            return await self._approvals.task_request(ctx, method, params)
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")

    def list_tools(self, agent: str) -> list[JsonObject]:
        policy = self._policy.current
        key = (policy.revision, agent, self._tools_generation)
        listing = self._listing_cache.get(key)
        if listing is None:
            listing = []
            for tool in self._upstreams.tools():
                risk = self.tool_risks.of(tool) if policy.rates_risk else None
                if not policy.is_listed(tool.name, server=tool.server, agent=agent, risk=risk):
                    continue
                if self._pins is not None and self._pins.hides(
                    tool, policy.on_definition_change, policy.on_new_tool
                ):
                    continue
                if self._runs_as_task(tool, agent, policy, risk):
                    listing.append({**tool.definition, "execution": {"taskSupport": "optional"}})
                else:
                    listing.append(_without_task_support(tool.definition))
            if self._approvals is not None and policy.may_require_approval:
                listing.extend(self._approvals.broker_tools)
            if len(self._listing_cache) > 1024:
                self._listing_cache.clear()
            self._listing_cache[key] = listing
        return listing

    def _runs_as_task(self, tool: UpstreamTool, agent: str, policy: Policy, risk: str | None) -> bool:
        """Whether the listing offers tasks for this tool: only a call the broker holds becomes
        one, so only a tool whose every call is held is offered as one."""
        if self._approvals is None:
            return False
        return policy.always_requires_approval(tool.name, server=tool.server, agent=agent, risk=risk)

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
                    if health is not None and not health.up:
                        # Before spending one of the grant's calls on a call that would be refused.
                        return store_down_result()
                    grant = await self._grants.use(
                        ctx.agent, tool.server, tool.name, tool.exposed_name, arguments, decision
                    )
                    if (
                        grant is not None
                        and health is not None
                        and not health.up
                        and not await health.recheck()
                    ):
                        # Seen down while the grant was spent: the call spent is lost with the store.
                        return store_down_result()
                    if grant is not None:
                        granted = await self._reserve(ctx, tool, arguments, decision, grant.id)
                        if isinstance(granted, dict):
                            return granted
                        if isinstance(granted, SpendBlocked):
                            # Over the grant's budget: a human decides, as without a grant.
                            logger.info("grant %s does not cover this call: %s", grant.id, granted.text)
                        else:
                            return await self._run_granted(
                                ctx, tool, arguments, decision, params, request, grant, granted
                            )
                self.call_counts.require_approval += 1
                return await self._hold(ctx, tool, arguments, decision, params, request)
            reservation = await self._reserve(ctx, tool, arguments, decision)
            if isinstance(reservation, dict):
                return reservation
            assert not isinstance(reservation, SpendBlocked), "only a grant's budget holds a call"
            self.call_counts.allow += 1
            self._record(decision, ctx, tool, arguments, None)
            return await self._forward(ctx, tool, arguments, params, request.notify, reservation)

        if action is Action.HIDE:
            self.call_counts.hide += 1
        else:
            self.call_counts.deny += 1
        decision_id = self._record(decision, ctx, tool, arguments, None)
        if action is Action.HIDE:
            return hidden_result(name, decision, decision_id)
        return denied_result(name, decision, decision_id)

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
        self._decisions.record(
            decision,
            agent=ctx.agent,
            session=ctx.session,
            tool=tool.exposed_name,
            server=tool.server,
            arguments=arguments,
            outcome="granted",
            grant=grant.id,
        )
        if self._approvals is not None and isinstance(params.get("task"), dict) and not ctx.modern:
            # Its client asked for a task: it gets one, which runs the call at once; its spend
            # counts from the start (the task's outcome is not awaited here).
            async with self._settled(reservation):
                return await self._approvals.run_granted_task(ctx, tool, arguments, decision, grant)
        return await self._forward(ctx, tool, arguments, params, request.notify, reservation)

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

    async def _forward(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        params: JsonObject,
        notify: Notify,
        reservation: Reservation | None = None,
    ) -> JsonObject:
        meta = params.get("_meta")
        upstream_meta: JsonObject | None = None
        relay = None
        agent_token = meta.get("progressToken") if isinstance(meta, dict) else None
        if agent_token is not None:
            upstream_token = f"{self._token_prefix}{next(self._token_counter)}"
            upstream_meta = {"progressToken": upstream_token}

            async def relay(message: JsonObject) -> None:
                if message.get("method") == "notifications/progress":
                    progress = dict(message.get("params") or {})
                    progress["progressToken"] = agent_token
                    await notify("notifications/progress", progress)

        try:
            async with self._settled(reservation):
                caller = UpstreamCaller(ctx.agent, ctx.claims or {}, ctx.subject_token)
                result = await self.forward_call(
                    tool, arguments, meta=upstream_meta, on_notification=relay, caller=caller
                )
        except UpstreamLost as exc:
            return upstream_failure_result(
                f"The connection to upstream server '{tool.server}' broke after the call to "
                f"'{tool.exposed_name}' was sent and before it answered ({exc.detail}); it may have run. "
                "It was not retried: check on the upstream before calling it again."
            )
        except UpstreamUnavailable as exc:
            return upstream_failure_result(
                f"The upstream server '{tool.server}' for tool '{tool.exposed_name}' is unavailable "
                f"({exc.detail}). The call was not sent; the broker is reconnecting, retry shortly."
            )
        except UpstreamTimeout as exc:
            return upstream_failure_result(
                f"The upstream server '{tool.server}' did not answer the call to '{tool.exposed_name}' in time "
                f"({exc.detail}); it may have run. It was not retried: check on the upstream before calling "
                "it again."
            )
        except UpstreamRpcError as exc:
            raise RpcError(exc.code, exc.rpc_message, exc.data) from exc
        except MalformedResult as exc:
            return upstream_failure_result(
                f"The upstream server '{tool.server}' answered the call to '{tool.exposed_name}' with a "
                f"malformed result ({exc.problem}); the broker did not pass it on. The call may have run "
                "upstream, so check before retrying anything that must not happen twice."
            )
        return result

    async def forward_call(
        self,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        *,
        meta: JsonObject | None = None,
        on_notification: Callable[[JsonObject], Awaitable[None]] | None = None,
        caller: UpstreamCaller | None = None,
    ) -> JsonObject:
        """The one door to the upstreams, also used by the approval service to release a held call.

        Returns only well-formed CallToolResults; raises `MalformedResult` for any other answer."""
        # Read before the call: a reconnect while it runs may negotiate another version.
        version = self._upstreams.protocol_version(tool.server)
        started = time.perf_counter()
        try:
            result = await self._upstreams.call_tool(
                tool,
                arguments,
                meta=meta,
                on_notification=on_notification,
                timeout=self._call_timeout,
                caller=caller,
            )
        finally:
            self.upstream_latency.observe(tool.server, time.perf_counter() - started)
        problem = tool_result_problem(result, version)
        if problem is not None:
            logger.warning(
                "upstream '%s' answered tools/call '%s' with a malformed result (protocol %s): %s",
                tool.server,
                tool.name,
                version or "unknown",
                problem,
            )
            raise MalformedResult(tool.server, problem)
        return result

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
    ) -> str:
        return self._decisions.record(
            decision,
            agent=ctx.agent,
            session=ctx.session,
            tool=tool.exposed_name,
            server=tool.server,
            arguments=arguments,
            outcome=outcome,
        )


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
