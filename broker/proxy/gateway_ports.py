"""What the gateway needs from the parts around it, as protocols, so it imports none of them.

`Upstreams` is met by the upstream pool (broker/proxy/upstream/pool.py) and `ApprovalGate` by the
approval side of the proxy (broker/proxy/held_calls.py); tests put small fakes in their place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from broker.approvals.grants import Grant
from broker.approvals.health import StoreHealth
from broker.policy.decision import Decision
from broker.proxy.agent import AgentContext
from broker.proxy.agent_request import AgentRequest
from broker.proxy.upstream.base import JsonObject
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.pool import ServerStatus, UpstreamTool


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
