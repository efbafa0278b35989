"""How agents wait on calls that need a human: the proxy's side of the approval service.

Clients differ in how long they will wait (see `broker.proxy.waiting` for the hold budget), so
every way of waiting is offered:

* the request stays open, with ``notifications/progress`` every few seconds when the agent
  sent a progress token (clients that reset their timeout on progress wait until the rule's
  deadline);
* otherwise, after the hold budget (4 s by default, under the shortest common client timeout),
  the agent gets a "pending approval" answer with the approval id and deadline; repeating the
  identical call attaches to the same approval, and the broker tools ``check_approval`` and
  ``cancel_approval`` answer or withdraw it by id;
* MCP tasks (2025-11-25): ``tools/call`` with a ``task`` field returns a task at once, and
  ``tasks/get``, ``tasks/result``, ``tasks/cancel`` and ``tasks/list`` are served from the
  store, so a task outlives a broker restart.

A pending answer is a promise: once an agent was told its call is pending, ending its session,
losing its connection or its client timing out does not withdraw the approval; only an explicit
cancellation does (``notifications/cancelled`` for a request that was not yet answered,
``tasks/cancel`` or ``cancel_approval``).

Identical calls (same agent, tool and canonical arguments) attach to the open approval: a retry
after the pending answer, a re-call after a lost connection, a retry from the same session whose
earlier request still waits. A call from another session while a caller there still waits here
for the identical call is a new intent and gets an approval of its own, so a human decides each
(two identical orders may mean two orders). An agent told its call is pending is the same caller
when it comes back from a new session. A caller from another session that attaches while nobody
was told to come back (a dropped connection, or a caller waiting on another replica) is told in
its result that the call was one shared execution, and the approver sees how many sessions an
approval answers (`Approval.callers`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
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
from broker.approvals.escalation import escalation_text
from broker.approvals.health import StoreHealth
from broker.approvals.idempotency import describe_ids
from broker.approvals.model import DELIVERABLE_STATUSES
from broker.approvals.outcomes import unknown_reason
from broker.approvals.quorum import progress_text
from broker.approvals.service import (
    POLICY_ACTOR,
    ApprovalService,
    CallReleaser,
    ReleaseFailed,
    ReleaseOutcomeUnknown,
)
from broker.policy.decision import Decision
from broker.policy.holder import PolicyHolder
from broker.proxy.edited_result import edit_meta, edit_notice, with_notice
from broker.proxy.gateway import AgentContext, AgentRequest, Notify
from broker.proxy.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from broker.proxy.upstream.base import (
    JsonObject,
    MalformedResult,
    UpstreamError,
    UpstreamRpcError,
    may_have_run,
)
from broker.proxy.upstream.pool import UpstreamPool, UpstreamTool
from broker.proxy.waiting import (
    DEFAULT_HOLD_BUDGET,
    NO_PREFERENCE,
    ClientWaits,
    budget_for,
    holds_until_deadline,
)

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
        hold_budget: float = DEFAULT_HOLD_BUDGET,
        progress_interval: float = 5.0,
        task_poll_interval_ms: int = 2000,
        check_tool_name: str = "check_approval",
        cancel_tool_name: str = "cancel_approval",
        client_waits: Mapping[str, ClientWaits] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_task_id: Callable[[], str] = lambda: os.urandom(12).hex(),
    ) -> None:
        self._service = service
        self._hold_budget = hold_budget
        self._progress_interval = progress_interval
        self._task_poll_interval_ms = task_poll_interval_ms
        self.check_tool_name = check_tool_name
        self.cancel_tool_name = cancel_tool_name
        self._client_waits = client_waits or {}
        self._clock = clock
        self._new_task_id = new_task_id
        # approval id -> session -> requests waiting here that were not answered yet: tells a
        # retry (same session) from a new intent (another session while one still waits).
        self._waiting: dict[str, Counter[str]] = {}

    @property
    def store_health(self) -> StoreHealth:
        return self._service.health

    @property
    def broker_tools(self) -> list[JsonObject]:
        """The broker's own tools, listed beside the upstream tools of an agent that may be held."""
        approval_id = {
            "approval_id": {"type": "string", "description": "The approval id from the pending answer"}
        }
        return [
            {
                "name": self.check_tool_name,
                "description": (
                    "Get the outcome of a tool call that is waiting for human approval. Pass the approval_id "
                    "from a 'PENDING HUMAN APPROVAL' answer. Returns the call's real result once a human "
                    "approved it (the call then runs exactly once), the human's reason if denied, or that it "
                    "is still pending."
                ),
                "inputSchema": {"type": "object", "properties": approval_id, "required": ["approval_id"]},
                "annotations": {"readOnlyHint": True, "title": "Check a held call"},
            },
            {
                "name": self.cancel_tool_name,
                "description": (
                    "Withdraw a tool call that is still waiting for human approval, so that it is never "
                    "executed. Pass the approval_id from a 'PENDING HUMAN APPROVAL' answer. A call a human "
                    "already approved cannot be withdrawn."
                ),
                "inputSchema": {"type": "object", "properties": approval_id, "required": ["approval_id"]},
                "annotations": {
                    "readOnlyHint": False,
                    "destructiveHint": False,
                    "title": "Withdraw a held call",
                },
            },
        ]

    def owns_tool(self, name: str) -> bool:
        return name == self.check_tool_name or name == self.cancel_tool_name

    async def call_broker_tool(self, ctx: AgentContext, name: str, arguments: dict[str, Any]) -> JsonObject:
        if name == self.cancel_tool_name:
            return await self.cancel_by_agent(ctx, arguments)
        return await self.check(ctx, arguments)

    def _waits(self, agent: str) -> ClientWaits:
        return self._client_waits.get(agent, NO_PREFERENCE)

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
            quorum=requirement.quorum if requirement is not None else 1,
            quorum_from=requirement.quorum_from if requirement is not None else (),
            escalation=requirement.escalation if requirement is not None else (),
            editable=requirement.editable if requirement is not None else (),
        )
        try:
            approval, shared = await self._open(ctx, new)
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
        waits = self._waits(ctx.agent)
        budget = budget_for(self._hold_budget, waits, requirement)
        if holds_until_deadline(waits, has_progress_token=progress_token is not None):
            # A client that resets its timeout on progress can wait as long as the rule allows.
            budget += max((approval.expires_at - self._clock()).total_seconds(), 0.0)
        else:
            progress_token = None  # its timeout runs anyway: progress would only cost messages
        waiting = self._waiting.setdefault(approval.id, Counter())
        waiting[ctx.session] += 1
        try:
            return await self._await_outcome(
                ctx, approval, budget, request.notify, progress_token, shared=shared
            )
        except StoreUnavailable as exc:
            # The approval itself is safe in the store; the agent can come back for it.
            return _store_down_result(tool.exposed_name, f"{exc}; approval {approval.id} is kept")
        except anyio.get_cancelled_exc_class():
            if request.withdrawn:
                with anyio.CancelScope(shield=True):
                    await self._withdraw(ctx, approval)
            raise
        finally:
            waiting[ctx.session] -= 1
            if not +waiting and self._waiting.get(approval.id) is waiting:
                del self._waiting[approval.id]

    async def _open(self, ctx: AgentContext, new: NewApproval) -> tuple[Approval, bool]:
        """The approval this call waits on, and whether it shares another caller's execution."""
        approval, created = await self._service.open(new)
        if created:
            return approval, False
        waiting = self._waiting.get(approval.id)
        others_wait = waiting is not None and any(
            count > 0 for session, count in waiting.items() if session != ctx.session
        )
        if approval.status is ApprovalStatus.PENDING and approval.pending_told_at is None and others_wait:
            approval, _ = await self._service.open(new, alongside=True)
            return approval, False
        return await self._service.attach(approval, agent=ctx.agent, session=ctx.session)

    async def _withdraw(self, ctx: AgentContext, approval: Approval) -> None:
        """The agent withdrew the request it was waiting on. Unless it had been told the call is
        pending (a promise: only an explicit cancellation withdraws it then), nobody is left to
        receive an approved result, so the approval must not be decided any more."""
        try:
            current = await self._service.store.get(approval.id)
            if current is None or current.pending_told_at is not None:
                return
            await self._service.cancel(approval.id, actor=ctx.agent, reason="the agent withdrew the call")
        except InvalidTransition:
            pass  # already decided: that outcome stands (an approved call is released regardless)
        except StoreUnavailable:
            logger.warning(
                "approval %s: the agent withdrew the call, but the store is unreachable", approval.id
            )

    async def _await_outcome(
        self,
        ctx: AgentContext,
        approval: Approval,
        budget: float,
        notify: Notify,
        progress_token: Any,
        *,
        shared: bool = False,
    ) -> JsonObject:
        deadline = time.monotonic() + budget
        ticks = 0
        while not approval.is_terminal:
            # A draining broker (SIGTERM) answers by its drain deadline; the approval stays for the agent.
            remaining = min(deadline, self._service.drain_deadline) - time.monotonic()
            if remaining <= 0:
                approval = await self._service.mark_pending_told(approval, actor=ctx.agent)
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
        return await self._deliver(ctx, approval, shared=shared)

    async def _deliver(self, ctx: AgentContext, approval: Approval, *, shared: bool = False) -> JsonObject:
        if approval.status in DELIVERABLE_STATUSES:
            await self._service.mark_delivered(approval, actor=ctx.agent)
        result = outcome_result(approval)
        if shared:
            _tell_shared(result, approval)
        return result

    def _waiting_message(self, approval: Approval) -> str:
        if approval.status is ApprovalStatus.PENDING:
            left = math.ceil(approval.time_left(self._clock()).total_seconds())
            votes = progress_text(approval, brackets=True)
            so_far = f"; {votes}" if votes else ""
            if (escalated := escalation_text(approval)) is not None:
                so_far += f"; {escalated}"
            return (
                f"Waiting for human approval of '{approval.tool}' (approval {approval.id}){so_far}; "
                f"auto-deny in {left} s"
            )
        return f"Approved by {approval.decided_by}; forwarding '{approval.tool}' to the upstream"

    def _pending_result(self, approval: Approval) -> JsonObject:
        """The answer a model reads while a human decides: plain words first, the same facts in
        `structuredContent` for clients that pass only that on, and `isError` so that no client
        mistakes it for the tool's result (nor validates it against the tool's output schema)."""
        check, cancel = self.check_tool_name, self.cancel_tool_name
        if approval.status is ApprovalStatus.PENDING:
            left = math.ceil(approval.time_left(self._clock()).total_seconds())
            state = (
                f"PENDING HUMAN APPROVAL: the call to '{approval.tool}' has NOT been executed yet. It is "
                f"waiting for a human to approve or deny it (approval id {approval.id}; it expires at "
                f"{_iso(approval.expires_at)}, in {left} s, and is rejected then if nobody decides)."
            )
            votes = progress_text(approval)
            if votes:
                state += f" It needs {approval.quorum} distinct approvers; so far {votes}."
            if (escalated := escalation_text(approval)) is not None:
                state += f" Nobody decided in time, so it was {escalated}."
            state += f" {edit_notice(approval)}" if approval.is_edited else ""
        else:
            state = (
                f"APPROVED, RUNNING: {approval.decided_by} approved the call to '{approval.tool}' and the "
                f"broker is executing it now (approval id {approval.id}); the result is not in yet."
            )
        steps = (
            f"What to do: get the outcome by calling {check} with approval_id '{approval.id}', or by "
            "repeating exactly the same call with exactly the same arguments; either returns the real "
            "result once it is decided, and the call runs at most once. Do NOT retry with changed "
            "arguments or another tool to get around the approval: that is a new request and needs its "
            f"own approval. To withdraw it, call {cancel} with approval_id '{approval.id}'. Meanwhile you "
            "may tell the user that a human approval is pending."
        )
        summary = _summary(approval)
        return {
            "content": [{"type": "text", "text": f"{state}\n{steps}"}],
            "structuredContent": {
                "status": "pending_approval"
                if approval.status is ApprovalStatus.PENDING
                else "approved_running",
                "executed": False,
                "approval_id": approval.id,
                "tool": approval.tool,
                "expires_at": _iso(approval.expires_at),
                "next_step": f"call {check} with approval_id '{approval.id}' or repeat the identical call",
                "do_not": "retry with changed arguments to get around the approval",
                "cancel": f"call {cancel} with approval_id '{approval.id}'",
            },
            "isError": True,
            "_meta": {APPROVAL_META_KEY: summary},
        }

    # -- check_approval ---------------------------------------------------------------------------

    async def check(self, ctx: AgentContext, arguments: dict[str, Any]) -> JsonObject:
        approval = await self._own_approval(ctx, self.check_tool_name, arguments)
        if approval is None:
            return _no_such_approval(arguments["approval_id"])
        budget = budget_for(self._hold_budget, self._waits(ctx.agent), None)
        return await self._await_outcome(ctx, approval, budget, _no_notify, None)

    async def cancel_by_agent(self, ctx: AgentContext, arguments: dict[str, Any]) -> JsonObject:
        approval = await self._own_approval(ctx, self.cancel_tool_name, arguments)
        if approval is None:
            return _no_such_approval(arguments["approval_id"])
        try:
            approval = await self._service.cancel(
                approval.id, actor=ctx.agent, reason=f"withdrawn by the agent ({self.cancel_tool_name})"
            )
        except InvalidTransition as exc:
            current = exc.current
            if current.status is ApprovalStatus.CANCELLED:
                approval = current
            else:
                text = (
                    f"Not withdrawn: the call to '{current.tool}' (approval {current.id}) is already "
                    f"{current.status.value}: {status_text(current)}. Call {self.check_tool_name} for its outcome."
                )
                return {"content": [{"type": "text", "text": text}], "isError": True}
        text = (
            f"Withdrawn: the call to '{approval.tool}' (approval {approval.id}) was cancelled and will never "
            "be executed."
        )
        return {"content": [{"type": "text", "text": text}], "_meta": {APPROVAL_META_KEY: _summary(approval)}}

    async def _own_approval(self, ctx: AgentContext, tool: str, arguments: dict[str, Any]) -> Approval | None:
        approval_id = arguments.get("approval_id")
        if not isinstance(approval_id, str) or not approval_id:
            raise RpcError(INVALID_PARAMS, f"{tool} needs a string 'approval_id'")
        approval = await self._service.store.get(approval_id)
        if approval is None or approval.agent != ctx.agent:
            return None
        return approval

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


def _no_such_approval(approval_id: str) -> JsonObject:
    text = f"No approval with id '{approval_id}' exists for this agent."
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _tell_shared(result: JsonObject, approval: Approval) -> None:
    """A caller from another session attached to this approval: its result is that one execution."""
    note = (
        f"Note: this identical call was attached to approval {approval.id}, first requested at "
        f"{_iso(approval.created_at)} in another session; this outcome answers all "
        f"{approval.callers} identical requests, and the upstream received the call at most once."
    )
    content = result.get("content")
    result["content"] = [{"type": "text", "text": note}, *(content if isinstance(content, list) else [])]
    summary = result.setdefault("_meta", {}).setdefault(APPROVAL_META_KEY, {})
    if isinstance(summary, dict):
        summary["shared"] = True


def _store_down_result(tool: str, detail: str) -> JsonObject:
    text = f"The call to '{tool}' needs human approval, but the broker's approval store is unreachable ({detail}). It was not forwarded."
    return {"content": [{"type": "text", "text": text}], "isError": True}


async def _no_notify(method: str, params: JsonObject) -> None:
    return None


def _summary(approval: Approval) -> JsonObject:
    summary: JsonObject = {
        "approvalId": approval.id,
        "status": approval.status.value,
        "expiresAt": _iso(approval.expires_at),
        "decidedBy": approval.decided_by,
        "decidedVia": approval.decided_via,
    }
    edited = edit_meta(approval)
    if edited is not None:
        summary["edited"] = edited
    return summary


def status_text(approval: Approval) -> str:
    notice = edit_notice(approval)
    text = _status_text(approval)
    return text if notice is None else f"{text}. {notice}"


def _status_text(approval: Approval) -> str:
    status = approval.status
    if status is ApprovalStatus.PENDING:
        votes = progress_text(approval, brackets=True)
        so_far = f": {votes}" if votes else ""
        if (escalated := escalation_text(approval)) is not None:
            so_far += f" ({escalated})"
        return f"waiting for human approval{so_far} until {_iso(approval.expires_at)}"
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
        # SDKs that report only a task's status still tell the model who said no and why
        via = f" via {approval.decided_via}" if approval.decided_via else ""
        reason = f": {approval.decision_reason}" if approval.decision_reason else ""
        return f"denied by {approval.decided_by}{via}{reason}"
    if status is ApprovalStatus.EXPIRED:
        return (
            f"expired: nobody decided before the deadline ({_iso(approval.expires_at)}), so the call "
            "was automatically rejected; it was not denied by a human and was not executed"
        )
    if approval.decided_via != POLICY_ACTOR or not approval.decision_reason:
        return "cancelled by the agent"
    return f"cancelled: {approval.decision_reason}"


def outcome_result(approval: Approval) -> JsonObject:
    """What the agent receives for a finished approval."""
    status = approval.status
    meta = {APPROVAL_META_KEY: _summary(approval)}
    if status in (ApprovalStatus.COMPLETED, ApprovalStatus.FAILED) and approval.result is not None:
        result = with_notice(dict(approval.result), approval)
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
    return with_notice(
        {"content": [{"type": "text", "text": text}], "isError": True, "_meta": meta}, approval
    )


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
        except MalformedResult as exc:
            # The upstream did answer, so it probably ran the call: say so, not just "failed".
            raise ReleaseFailed(
                f"upstream '{tool.server}' answered with a malformed result ({exc.problem}), which the "
                "broker did not pass on; the call may have run upstream"
            ) from exc
        except UpstreamError as exc:
            if may_have_run(exc):
                raise ReleaseOutcomeUnknown(exc.detail) from exc
            raise ReleaseFailed(f"{exc}; it was not sent") from exc
        return result
