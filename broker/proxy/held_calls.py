"""How agents wait on calls that need a human: the proxy's side of the approval service.

Clients differ in how long they will wait, so every way of waiting is offered:

* the request stays open, with ``notifications/progress`` every few seconds when the agent
  sent a progress token (clients that reset their timeout on progress wait until the rule's
  deadline);
* otherwise after a hold budget (50 s by default, under the common 60 s client timeout) the
  agent gets a "pending approval" result with the approval id and deadline; repeating the
  identical call attaches to the same approval, and the broker tool ``check_approval``
  answers the same question by id;
* MCP tasks (2025-11-25): ``tools/call`` with a ``task`` field returns a task at once, and
  ``tasks/get``, ``tasks/result``, ``tasks/cancel`` and ``tasks/list`` are served from the
  store, so a task outlives a broker restart.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from broker.approvals import (
    Approval,
    ApprovalStatus,
    InvalidTransition,
    ListPosition,
    NewApproval,
    StoreUnavailable,
)
from broker.approvals.idempotency import describe_ids
from broker.approvals.model import DELIVERABLE_STATUSES
from broker.approvals.outcomes import unknown_reason
from broker.approvals.service import (
    POLICY_ACTOR,
    ApprovalService,
    CallReleaser,
    ReleaseFailed,
    ReleaseOutcomeUnknown,
)
from broker.policy.decision import Decision
from broker.policy.holder import PolicyHolder
from broker.proxy.gateway import AgentContext, AgentRequest, Notify
from broker.proxy.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from broker.proxy.upstream.base import JsonObject, UpstreamError, UpstreamRpcError, may_have_run
from broker.proxy.upstream.pool import UpstreamPool, UpstreamTool

logger = logging.getLogger(__name__)

TASKS_PAGE_SIZE = 100
RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"
APPROVAL_META_KEY = "io.github.mcp-approval-broker/approval"
TASK_STATUS = {
    ApprovalStatus.PENDING: "working",
    ApprovalStatus.APPROVED: "working",
    ApprovalStatus.RELEASED: "working",
    ApprovalStatus.COMPLETED: "completed",
    ApprovalStatus.FAILED: "failed",
    ApprovalStatus.DENIED: "failed",
    ApprovalStatus.EXPIRED: "failed",
    ApprovalStatus.CANCELLED: "cancelled",
    ApprovalStatus.OUTCOME_UNKNOWN: "failed",
}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class HeldCalls:
    def __init__(
        self,
        service: ApprovalService,
        *,
        hold_budget: float = 50.0,
        progress_interval: float = 5.0,
        task_poll_interval_ms: int = 2000,
        check_tool_name: str = "check_approval",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_task_id: Callable[[], str] = lambda: os.urandom(12).hex(),
    ) -> None:
        self._service = service
        self._hold_budget = hold_budget
        self._progress_interval = progress_interval
        self._task_poll_interval_ms = task_poll_interval_ms
        self.check_tool_name = check_tool_name
        self._clock = clock
        self._new_task_id = new_task_id

    @property
    def store_available(self) -> bool:
        return self._service.store_available

    @property
    def check_tool(self) -> JsonObject:
        return {
            "name": self.check_tool_name,
            "description": (
                "Check on a tool call that is waiting for human approval. Pass the approval id from a "
                "'pending approval' result; returns the call's result once a human decided, or its status."
            ),
            "inputSchema": {
                "type": "object",
                "properties": {"approval_id": {"type": "string", "description": "The approval id"}},
                "required": ["approval_id"],
            },
            "annotations": {"readOnlyHint": True, "title": "Check a held call"},
        }

    # -- tools/call on a require_approval tool --------------------------------------------------

    async def hold(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        params: JsonObject,
        request: AgentRequest,
    ) -> JsonObject:
        requirement = decision.approval
        timeout = requirement.timeout_seconds if requirement is not None else 300.0
        task = params.get("task") if not ctx.modern else None
        new = NewApproval(
            agent=ctx.agent,
            server=tool.server,
            tool=tool.exposed_name,
            upstream_tool=tool.name,
            arguments=arguments,
            policy_revision=decision.revision,
            rule=decision.rule,
            rule_reason=decision.reason,
            timeout=timedelta(seconds=timeout),
            session_id=ctx.session,
            approvers=requirement.approvers if requirement is not None else (),
            channels=requirement.channels if requirement is not None else (),
            task_id=self._new_task_id() if isinstance(task, dict) else None,
        )
        try:
            approval, _ = await self._service.open(new)
        except StoreUnavailable as exc:
            # Fail closed: a call that cannot be parked is not forwarded either.
            return _store_down_result(tool.exposed_name, str(exc))
        if isinstance(task, dict):
            if approval.task_id is None:
                # The same call was parked earlier without a task; this caller still gets one.
                approval = await self._service.store.assign_task(approval.id, self._new_task_id())
            return {"task": self._task(approval)}

        meta = params.get("_meta")
        progress_token = meta.get("progressToken") if isinstance(meta, dict) else None
        if progress_token is not None:
            # A client that resets its timeout on progress can wait as long as the rule allows.
            budget = max((approval.expires_at - self._clock()).total_seconds(), 0.0) + self._hold_budget
        else:
            budget = self._hold_budget
        try:
            return await self._await_outcome(ctx, approval, budget, request.notify, progress_token)
        except StoreUnavailable as exc:
            # The approval itself is safe in the store; the agent can come back for it.
            return _store_down_result(tool.exposed_name, f"{exc}; approval {approval.id} is kept")
        except anyio.get_cancelled_exc_class():
            if request.withdrawn:
                with anyio.CancelScope(shield=True):
                    await self._withdraw(ctx, approval)
            raise

    async def _withdraw(self, ctx: AgentContext, approval: Approval) -> None:
        """The agent withdrew the call it was waiting on: nobody is left to receive an approved
        result, so the approval must not be decided any more."""
        try:
            await self._service.cancel(approval.id, actor=ctx.agent, reason="the agent withdrew the call")
        except InvalidTransition:
            pass  # already decided: that outcome stands (an approved call is released regardless)
        except StoreUnavailable:
            logger.warning(
                "approval %s: the agent withdrew the call, but the store is unreachable", approval.id
            )

    async def _await_outcome(
        self, ctx: AgentContext, approval: Approval, budget: float, notify: Notify, progress_token: Any
    ) -> JsonObject:
        deadline = time.monotonic() + budget
        ticks = 0
        while not approval.is_terminal:
            # A draining broker (SIGTERM) answers by its drain deadline; the approval stays for the agent.
            remaining = min(deadline, self._service.drain_deadline) - time.monotonic()
            if remaining <= 0:
                return self._pending_result(approval)
            step = min(remaining, self._progress_interval) if progress_token is not None else remaining
            approval = await self._service.wait(approval.id, step)
            if progress_token is not None and not approval.is_terminal:
                ticks += 1
                await notify(
                    "notifications/progress",
                    {
                        "progressToken": progress_token,
                        "progress": ticks,
                        "message": self._waiting_message(approval),
                    },
                )
        return await self._deliver(ctx, approval)

    async def _deliver(self, ctx: AgentContext, approval: Approval) -> JsonObject:
        if approval.status in DELIVERABLE_STATUSES:
            await self._service.mark_delivered(approval, actor=ctx.agent)
        return outcome_result(approval)

    def _waiting_message(self, approval: Approval) -> str:
        if approval.status is ApprovalStatus.PENDING:
            left = math.ceil(approval.time_left(self._clock()).total_seconds())
            return f"Waiting for human approval of '{approval.tool}' (approval {approval.id}); auto-deny in {left} s"
        return f"Approved by {approval.decided_by}; forwarding '{approval.tool}' to the upstream"

    def _pending_result(self, approval: Approval) -> JsonObject:
        if approval.status is ApprovalStatus.PENDING:
            left = math.ceil(approval.time_left(self._clock()).total_seconds())
            text = (
                f"Pending human approval: the call to '{approval.tool}' is waiting for a human decision "
                f"(approval id {approval.id}). It expires at {_iso(approval.expires_at)} (in {left} s) and is "
                f"auto-denied then. To get the result once decided, repeat the identical call, or call "
                f"{self.check_tool_name} with approval_id '{approval.id}'."
            )
        else:
            text = (
                f"Approved by {approval.decided_by}: the call to '{approval.tool}' is being forwarded "
                f"(approval id {approval.id}). Repeat the identical call, or call {self.check_tool_name} "
                f"with approval_id '{approval.id}', to get its result."
            )
        return {
            "content": [{"type": "text", "text": text}],
            "isError": True,
            "_meta": {APPROVAL_META_KEY: _summary(approval)},
        }

    # -- check_approval ---------------------------------------------------------------------------

    async def check(self, ctx: AgentContext, arguments: dict[str, Any]) -> JsonObject:
        approval_id = arguments.get("approval_id")
        if not isinstance(approval_id, str) or not approval_id:
            raise RpcError(INVALID_PARAMS, f"{self.check_tool_name} needs a string 'approval_id'")
        approval = await self._service.store.get(approval_id)
        if approval is None or approval.agent != ctx.agent:
            return {
                "content": [
                    {"type": "text", "text": f"No approval with id '{approval_id}' exists for this agent."}
                ],
                "isError": True,
            }
        return await self._await_outcome(ctx, approval, self._hold_budget, _no_notify, None)

    # -- tasks ---------------------------------------------------------------------------------------

    async def task_request(self, ctx: AgentContext, method: str, params: JsonObject | None) -> JsonObject:
        if method == "tasks/list":
            return await self._list_tasks(ctx, params)
        task_id = (params or {}).get("taskId")
        if not isinstance(task_id, str):
            raise RpcError(INVALID_PARAMS, f"{method} needs a string 'taskId'")
        approval = await self._service.store.get_by_task(task_id)
        if approval is None or approval.agent != ctx.agent:
            raise RpcError(INVALID_PARAMS, f"Task not found: {task_id}")
        if method == "tasks/get":
            return self._task(approval)
        if method == "tasks/cancel":
            try:
                approval = await self._service.cancel(
                    approval.id, actor=ctx.agent, reason="task cancelled by the agent"
                )
            except InvalidTransition as exc:
                raise RpcError(
                    INVALID_PARAMS, f"Cannot cancel task {task_id}: it is already {exc.current.status.value}"
                ) from exc
            return self._task(approval)
        if method == "tasks/result":
            while not approval.is_terminal:
                if self._service.drain_deadline <= time.monotonic():
                    raise RpcError(
                        INTERNAL_ERROR,
                        f"This broker is shutting down; task {task_id} is kept: call tasks/result again "
                        "(any broker replica can answer it)",
                    )
                approval = await self._service.wait(approval.id, 3600.0)
            result = await self._deliver(ctx, approval)
            result.setdefault("_meta", {})[RELATED_TASK_META_KEY] = {"taskId": task_id}
            return result
        raise RpcError(-32601, f"Method not found: {method}")

    async def _list_tasks(self, ctx: AgentContext, params: JsonObject | None) -> JsonObject:
        cursor = (params or {}).get("cursor")
        after = None
        if cursor is not None:
            if not isinstance(cursor, str):
                raise RpcError(
                    INVALID_PARAMS, "tasks/list 'cursor' must be a string from an earlier nextCursor"
                )
            try:
                after = ListPosition.from_token(cursor)
            except ValueError as exc:
                raise RpcError(INVALID_PARAMS, f"tasks/list: {exc}") from None
        page = await self._service.store.list(
            agent=ctx.agent, with_task=True, limit=TASKS_PAGE_SIZE, after=after
        )
        listed: JsonObject = {"tasks": [self._task(approval) for approval in page]}
        if len(page) == TASKS_PAGE_SIZE:
            listed["nextCursor"] = ListPosition.of(page[-1]).token()
        return listed

    def _task(self, approval: Approval) -> JsonObject:
        assert approval.task_id is not None
        updated = approval.completed_at or approval.decided_at or approval.released_at or approval.created_at
        ttl_ms = int((approval.expires_at - approval.created_at).total_seconds() * 1000) + 24 * 3600 * 1000
        return {
            "taskId": approval.task_id,
            "status": TASK_STATUS[approval.status],
            "statusMessage": status_text(approval),
            "createdAt": _iso(approval.created_at),
            "lastUpdatedAt": _iso(updated),
            "ttl": ttl_ms,
            "pollInterval": self._task_poll_interval_ms,
        }


def _store_down_result(tool: str, detail: str) -> JsonObject:
    text = f"The call to '{tool}' needs human approval, but the broker's approval store is unreachable ({detail}). It was not forwarded."
    return {"content": [{"type": "text", "text": text}], "isError": True}


async def _no_notify(method: str, params: JsonObject) -> None:
    return None


def _summary(approval: Approval) -> JsonObject:
    return {
        "approvalId": approval.id,
        "status": approval.status.value,
        "expiresAt": _iso(approval.expires_at),
        "decidedBy": approval.decided_by,
        "decidedVia": approval.decided_via,
    }


def status_text(approval: Approval) -> str:
    status = approval.status
    if status is ApprovalStatus.PENDING:
        return f"waiting for human approval until {_iso(approval.expires_at)}"
    if status is ApprovalStatus.APPROVED or status is ApprovalStatus.RELEASED:
        return f"approved by {approval.decided_by}; forwarding to the upstream"
    if status is ApprovalStatus.COMPLETED:
        return f"approved by {approval.decided_by} and completed"
    if status is ApprovalStatus.FAILED:
        return "approved, but the call could not be completed (it was not run)"
    if status is ApprovalStatus.OUTCOME_UNKNOWN:
        return (
            f"outcome unknown: the approved call was sent to upstream '{approval.server}' and no answer came "
            "back; it may have run, and it was not retried"
        )
    if status is ApprovalStatus.DENIED:
        return f"denied by {approval.decided_by}"
    if status is ApprovalStatus.EXPIRED:
        return "expired: nobody decided before the deadline (auto-denied)"
    if approval.decided_via != POLICY_ACTOR or not approval.decision_reason:
        return "cancelled by the agent"
    return f"cancelled: {approval.decision_reason}"


def outcome_result(approval: Approval) -> JsonObject:
    """What the agent receives for a finished approval."""
    status = approval.status
    meta = {APPROVAL_META_KEY: _summary(approval)}
    if status in (ApprovalStatus.COMPLETED, ApprovalStatus.FAILED) and approval.result is not None:
        result = dict(approval.result)
        result["_meta"] = {**(result.get("_meta") or {}), **meta}
        return result
    when = _iso(approval.decided_at) if approval.decided_at else "?"
    if status is ApprovalStatus.DENIED:
        reason = f": {approval.decision_reason}" if approval.decision_reason else ""
        text = (
            f"Denied by a human: {approval.decided_by} denied the call to '{approval.tool}' "
            f"via {approval.decided_via} at {when}{reason}. Do not retry this call."
        )
    elif status is ApprovalStatus.EXPIRED:
        text = (
            f"Expired: nobody approved the call to '{approval.tool}' before its deadline "
            f"({_iso(approval.expires_at)}), so it was automatically rejected. It was not denied by a human; "
            "it was not executed."
        )
    elif status is ApprovalStatus.OUTCOME_UNKNOWN:
        ids = describe_ids(approval.arguments)
        text = (
            f"Outcome unknown: the approved call to '{approval.tool}' was sent to upstream '{approval.server}' "
            f"but no answer came back ({unknown_reason(approval)}); it may have run. It was not retried. "
            "Check on the upstream before doing it again" + (f" (the call carried {ids})." if ids else ".")
        )
    else:
        text = f"Cancelled: the call to '{approval.tool}' was withdrawn before anybody decided; it was not executed."
    return {"content": [{"type": "text", "text": text}], "isError": True, "_meta": meta}


class UpstreamReleaser(CallReleaser):
    """Forwards approved calls through the same door as allowed ones, after re-checking the policy."""

    def __init__(self, *, upstreams: UpstreamPool, policy: PolicyHolder, forward: Any) -> None:
        self._upstreams = upstreams
        self._policy = policy
        self._forward = forward

    def can_release(self, approval: Approval) -> bool:
        return self._upstreams.is_connected(approval.server)

    async def release(self, approval: Approval) -> JsonObject:
        tool = self._upstreams.resolve(approval.tool)
        if tool is None or tool.name != approval.upstream_tool or tool.server != approval.server:
            raise ReleaseFailed(
                f"the tool '{approval.tool}' is no longer offered by upstream '{approval.server}'"
            )
        decision = self._policy.current.decide(
            tool.name, server=tool.server, agent=approval.agent, arguments=approval.arguments
        )
        refusal = decision.refusal()
        if refusal is not None:
            raise ReleaseFailed(f"{refusal}; it was not forwarded")
        try:
            result: JsonObject = await self._forward(tool, dict(approval.arguments))
        except UpstreamRpcError as exc:
            raise ReleaseFailed(f"upstream '{tool.server}' rejected the call: {exc.rpc_message}") from exc
        except UpstreamError as exc:
            if may_have_run(exc):
                raise ReleaseOutcomeUnknown(exc.detail) from exc
            raise ReleaseFailed(f"{exc}; it was not sent") from exc
        return result
