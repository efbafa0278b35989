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
``tasks/cancel`` or ``cancel_approval``). Before the pending answer, the agent withdrawing the
request it waits on withdraws the approval, also while that approval is still being opened (the
open runs to its end first), unless an identical request attached to it still waits here; a
client that only timed out does not, even when its session end overtakes its timed-out
cancellation (`broker.proxy.agent_request`: the session end withdraws after a grace in which
that cancellation still counts).

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
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel

from broker.approvals import (
    Approval,
    ApprovalStatus,
    InvalidTransition,
    ListPosition,
    NewApproval,
    StoreUnavailable,
)
from broker.approvals.grants import Grant
from broker.approvals.health import StoreHealth
from broker.approvals.model import DELIVERABLE_STATUSES
from broker.approvals.service import (
    ApprovalService,
)
from broker.policy.decision import Decision
from broker.proxy.agent import AgentContext
from broker.proxy.agent_request import AgentRequest, Notify
from broker.proxy.held_answers import (
    APPROVAL_META_KEY,
    no_such_approval,
    outcome_result,
    pending_result,
    status_text,
    store_down_result,
    summary,
    tell_shared,
    waiting_message,
)
from broker.proxy.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from broker.proxy.task_view import RELATED_TASK_META_KEY, task_of
from broker.proxy.upstream.base import (
    JsonObject,
)
from broker.proxy.upstream.pool import UpstreamTool
from broker.proxy.waiting import (
    DEFAULT_HOLD_BUDGET,
    NO_PREFERENCE,
    ClientWaits,
    budget_for,
    holds_until_deadline,
)

logger = logging.getLogger(__name__)

TASKS_PAGE_SIZE = 100
OPEN_TIMEOUT = 60.0
"""Seconds an approval may take to open, however the request ends meanwhile: a few store round
trips, each bounded by the store's own timeouts (`broker.store.database`)."""


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
        task = params.get("task") if not ctx.modern else None
        new = self._new_approval(ctx, tool, arguments, decision, with_task=isinstance(task, dict))
        try:
            approval, shared = await self._open_to_its_end(ctx, new)
        except StoreUnavailable as exc:
            # Fail closed: a call that cannot be parked is not forwarded either.
            return store_down_result(tool.exposed_name, str(exc))
        try:
            # A withdrawal that landed while the approval was being opened is heard here.
            await anyio.lowlevel.checkpoint_if_cancelled()
            if isinstance(task, dict):
                if approval.task_id is None:
                    # The same call was parked earlier without a task; this caller still gets one.
                    approval = await self._service.store.assign_task(approval.id, self._new_task_id())
                return {"task": self._task(approval)}
            return await self._wait_here(ctx, tool, approval, decision, params, request, shared=shared)
        except anyio.get_cancelled_exc_class():
            # Shielded: after a session end, whether it was a withdrawal is known only after a grace.
            with anyio.CancelScope(shield=True):
                if await request.withdrawal():
                    await self._withdraw(ctx, approval)
            raise

    async def _wait_here(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        approval: Approval,
        decision: Decision,
        params: JsonObject,
        request: AgentRequest,
        *,
        shared: bool,
    ) -> JsonObject:
        meta = params.get("_meta")
        progress_token = meta.get("progressToken") if isinstance(meta, dict) else None
        waits = self._waits(ctx.agent)
        budget = budget_for(self._hold_budget, waits, decision.approval)
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
            return store_down_result(tool.exposed_name, f"{exc}; approval {approval.id} is kept")
        finally:
            waiting[ctx.session] -= 1
            if not +waiting and self._waiting.get(approval.id) is waiting:
                del self._waiting[approval.id]

    async def run_granted_task(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        grant: Grant,
    ) -> JsonObject:
        """A task-augmented call a grant let through: its client asked for a task, so it gets one,
        served like a held call's (an approval, approved by the grant at once and released now)."""
        new = self._new_approval(ctx, tool, arguments, decision, with_task=True)
        try:
            approval = await self._service.open_granted(new, grant)
        except StoreUnavailable as exc:
            return store_down_result(tool.exposed_name, str(exc))
        return {"task": self._task(approval)}

    def _new_approval(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        decision: Decision,
        *,
        with_task: bool,
    ) -> NewApproval:
        requirement = decision.approval
        timeout = requirement.timeout_seconds if requirement is not None else 300.0
        return NewApproval(
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
            task_id=self._new_task_id() if with_task else None,
            quorum=requirement.quorum if requirement is not None else 1,
            quorum_from=requirement.quorum_from if requirement is not None else (),
            escalation=requirement.escalation if requirement is not None else (),
            editable=requirement.editable if requirement is not None else (),
            claims=ctx.claims,
        )

    async def _open_to_its_end(self, ctx: AgentContext, new: NewApproval) -> tuple[Approval, bool]:
        """`_open`, run to its end even when the agent withdraws the request meanwhile: cut short
        (the store finishes each write it began), the approval could be stored and left pending
        with nobody to withdraw it, and an approver could then release a call the agent withdrew.
        `hold` hears the withdrawal right after. Bounded, as every shield must be."""
        with anyio.move_on_after(OPEN_TIMEOUT, shield=True):
            return await self._open(ctx, new)
        raise StoreUnavailable(f"opening the approval took longer than {OPEN_TIMEOUT:g} s")

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
        pending (a promise: only an explicit cancellation withdraws it then), or another request
        attached to the same approval still waits here for its result (a retry from the same
        session), nobody is left to receive an approved result, so the approval must not be
        decided any more."""
        still_waiting = self._waiting.get(approval.id)
        if still_waiting is not None and +still_waiting:
            # The withdrawing request stopped counting before this runs (`_wait_here` ends first),
            # so whichever of several withdrawn requests checks last sees none left and withdraws.
            logger.info(
                "approval %s: one request withdrew; another identical request still waits on it",
                approval.id,
            )
            return
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
                return pending_result(
                    approval, now=self._clock(), check=self.check_tool_name, cancel=self.cancel_tool_name
                )
            step = min(remaining, self._progress_interval) if progress_token is not None else remaining
            approval = await self._service.wait(approval.id, step)
            if progress_token is not None and not approval.is_terminal:
                ticks += 1
                await notify(
                    "notifications/progress",
                    {
                        "progressToken": progress_token,
                        "progress": ticks,
                        "message": waiting_message(approval, self._clock()),
                    },
                )
        return await self._deliver(ctx, approval, shared=shared)

    async def _deliver(self, ctx: AgentContext, approval: Approval, *, shared: bool = False) -> JsonObject:
        if approval.status in DELIVERABLE_STATUSES:
            await self._service.mark_delivered(approval, actor=ctx.agent)
        result = outcome_result(approval)
        if shared:
            tell_shared(result, approval)
        return result

    # -- check_approval ---------------------------------------------------------------------------

    async def check(self, ctx: AgentContext, arguments: dict[str, Any]) -> JsonObject:
        approval = await self._own_approval(ctx, self.check_tool_name, arguments)
        if approval is None:
            return no_such_approval(arguments["approval_id"])
        budget = budget_for(self._hold_budget, self._waits(ctx.agent), None)
        return await self._await_outcome(ctx, approval, budget, _no_notify, None)

    async def cancel_by_agent(self, ctx: AgentContext, arguments: dict[str, Any]) -> JsonObject:
        approval = await self._own_approval(ctx, self.cancel_tool_name, arguments)
        if approval is None:
            return no_such_approval(arguments["approval_id"])
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
        return {"content": [{"type": "text", "text": text}], "_meta": {APPROVAL_META_KEY: summary(approval)}}

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
        return task_of(approval, poll_interval_ms=self._task_poll_interval_ms)


async def _no_notify(method: str, params: JsonObject) -> None:
    return None
