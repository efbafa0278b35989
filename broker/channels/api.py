"""The decisions API: approvers list, inspect and decide held calls over HTTP (also used by the CLI).

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime,
and the per-router dependency alias below is local to `build_decisions_router`.
"""

import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from broker.approvals import Approval, ApprovalNotFound, ApprovalStatus, AuditRecord, InvalidTransition
from broker.approvals.approvers import ApproverDirectory
from broker.approvals.call_view import CallContext, CallContexts, call_view
from broker.approvals.clock import require_utc
from broker.approvals.deciding import NotAllowedToDecide
from broker.approvals.edits import EditRefused, recorded_changes
from broker.approvals.grant_desk import GrantDesk
from broker.approvals.idempotency import idempotency_ids
from broker.approvals.model import Approver
from broker.approvals.outcomes import guidance
from broker.approvals.ports import ArgumentsChanged, InvalidValue, ListPosition, StoreUnavailable
from broker.approvals.quorum import progress, progress_text
from broker.approvals.service import ApprovalService
from broker.approvals.verdict import Approve, Deny, Verdict
from broker.channels.grants_api import GrantBody, bearer_approver, grant_json
from broker.channels.sso.api_tokens import SsoApproverTokens


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def approval_json(
    approval: Approval, *, calls: CallContexts | None = None, context: CallContext | None = None
) -> dict[str, Any]:
    """The approval as the API shows it. `fields` lists the arguments in reading order (see
    `broker.approvals.call_view`); `context` says why the call was held and, with `calls` or
    `context`, what the tool is and how risky it looks, who waits, and (with `context`) the last
    decisions on the same tool and agent."""
    if context is not None:
        view, facts = context.view, context.tool
    elif calls is not None:
        view, facts = calls.view(approval), calls.tool(approval.server, approval.upstream_tool)
    else:
        view, facts = call_view(approval, None), None
    about: dict[str, Any] = {"hold": view.hold.to_json()}
    if facts is not None:
        about["tool"] = facts.to_json()
    if context is not None:
        about["waiting"] = context.waiting.to_json()
        about["recent"] = [_recent_json(other) for other in context.recent]
    return {
        "id": approval.id,
        "status": approval.status.value,
        "agent": approval.agent,
        "session_id": approval.session_id,
        "server": approval.server,
        "tool": approval.tool,
        "upstream_tool": approval.upstream_tool,
        "arguments": approval.arguments,
        "arguments_sha256": approval.arguments_hash,
        "policy_revision": approval.policy_revision,
        "rule": approval.rule,
        "rule_reason": approval.rule_reason,
        "approvers": list(approval.approvers),
        "created_at": _iso(approval.created_at),
        "expires_at": _iso(approval.expires_at),
        "decided_by": approval.decided_by,
        "decided_at": _iso(approval.decided_at),
        "decided_via": approval.decided_via,
        "decision_reason": approval.decision_reason,
        "released_at": _iso(approval.released_at),
        "completed_at": _iso(approval.completed_at),
        "result": approval.result,
        "task_id": approval.task_id,
        "callers": approval.callers,
        "pending_told_at": _iso(approval.pending_told_at),
        "idempotency_ids": [
            {"path": path, "value": value} for path, value in idempotency_ids(approval.arguments)
        ],
        "guidance": guidance(approval) if approval.status is ApprovalStatus.OUTCOME_UNKNOWN else None,
        "fields": [field.to_json() for field in view.fields],
        "context": about,
        **quorum_json(approval),
        **edits_json(approval),
    }


def edits_json(approval: Approval) -> dict[str, Any]:
    """What approvers may change, and what one changed (``original_arguments`` is what the agent sent)."""
    return {
        "editable": list(approval.editable),
        "edited_by": approval.edited_by,
        "edited_at": _iso(approval.edited_at),
        "original_arguments": approval.original_arguments,
        "changes": [change.as_json() for change in recorded_changes(approval)],
    }


def _recent_json(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "status": approval.status.value,
        "created_at": _iso(approval.created_at),
        "decided_by": approval.decided_by,
        "decided_via": approval.decided_via,
        "decided_at": _iso(approval.decided_at),
        "decision_reason": approval.decision_reason,
    }


def quorum_json(approval: Approval) -> dict[str, Any]:
    """The quorum and the votes toward it (``progress``: "1 of 2 approvals: alice"; None for one decision)."""
    tally = progress(approval)
    return {
        "votes": [
            {"approver": vote.approver, "via": vote.via, "at": _iso(vote.at), "groups": sorted(vote.groups)}
            for vote in approval.votes
        ],
        "quorum": {
            "needed": approval.quorum,
            "have": len(tally.counted),
            "from": list(approval.quorum_from),
            "missing": list(tally.missing_groups),
        },
        "progress": progress_text(approval),
    }


def audit_json(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "event": record.event,
        "actor": record.actor,
        "at": _iso(record.at),
        "details": dict(record.details),
    }


def already_decided_message(current: Approval) -> str:
    if current.decided_by is not None and current.decided_at is not None:
        return (
            f"already {current.status.value}: decided by {current.decided_by} "
            f"via {current.decided_via} at {_iso(current.decided_at)}"
        )
    return f"already {current.status.value}"


class DecisionBody(BaseModel):
    reason: str | None = Field(default=None, max_length=2000)
    edits: dict[str, Any] | None = Field(
        default=None, description="approve with edits: argument name -> new value (the rule's editable ones)"
    )
    arguments_sha256: str | None = Field(
        default=None,
        max_length=64,
        description="the arguments you reviewed; refused with 409 if someone edited them since",
    )
    grant: GrantBody | None = None
    """Approve only: also let the agent's next calls like this one through (see grants_api)."""


def build_decisions_router(
    service: ApprovalService,
    directory: ApproverDirectory,
    calls: CallContexts | None = None,
    grants: GrantDesk | None = None,
    sso: SsoApproverTokens | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/api/approvals", tags=["approvals"])

    approver = bearer_approver(directory, sso)

    Caller = Annotated[Approver, Depends(approver)]

    @router.get("")
    async def list_approvals(
        caller: Caller,
        status: Annotated[list[ApprovalStatus] | None, Query()] = None,
        agent: str | None = None,
        tool: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        before: datetime | None = None,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> dict[str, Any]:
        if before is not None:
            if before.tzinfo is None:
                raise HTTPException(422, "'before' needs a time zone, e.g. 2026-01-01T00:00:00Z")
            try:
                before = require_utc(before, field="'before'")
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
        try:
            after = ListPosition.from_token(cursor) if cursor is not None else None
        except ValueError as exc:
            raise HTTPException(422, f"'cursor': {exc}") from None
        try:
            approvals = await service.store.list(
                statuses=status, agent=agent, tool=tool, limit=limit, before=before, after=after
            )
        except StoreUnavailable as exc:
            raise HTTPException(503, f"the approval store is unavailable: {exc}") from exc
        listed: dict[str, Any] = {
            "approvals": [
                {
                    **approval_json(approval, calls=calls),
                    "can_decide": service.may_decide(approval, caller) is None,
                }
                for approval in approvals
            ]
        }
        if len(approvals) == limit:
            listed["next_cursor"] = ListPosition.of(approvals[-1]).token()
        return listed

    @router.get("/{approval_id}")
    async def show(approval_id: str, caller: Caller) -> dict[str, Any]:
        try:
            approval = await service.store.get(approval_id)
            if approval is None:
                raise HTTPException(404, f"no approval with id {approval_id!r}")
            trail = await service.store.audit_trail(approval_id)
            context = await calls.context(approval) if calls is not None else None
        except StoreUnavailable as exc:
            raise HTTPException(503, f"the approval store is unavailable: {exc}") from exc
        return {
            **approval_json(approval, calls=calls, context=context),
            "can_decide": approval.status is ApprovalStatus.PENDING
            and service.may_decide(approval, caller) is None,
            "audit": [audit_json(record) for record in trail],
        }

    async def decide(approval_id: str, caller: Approver, verdict: Verdict) -> dict[str, Any]:
        try:
            approval = await service.decide(approval_id, verdict, approver=caller, via="api")
        except ApprovalNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except NotAllowedToDecide as exc:
            raise HTTPException(403, str(exc)) from exc
        except EditRefused as exc:
            raise HTTPException(422, f"the edit was refused: {exc}") from exc
        except ArgumentsChanged as exc:
            raise HTTPException(
                409, {"message": str(exc), "approval": approval_json(exc.current, calls=calls)}
            ) from exc
        except InvalidTransition as exc:
            raise HTTPException(
                409,
                {
                    "message": already_decided_message(exc.current),
                    "approval": approval_json(exc.current, calls=calls),
                },
            ) from exc
        except InvalidValue as exc:
            raise HTTPException(422, f"nothing was decided: {exc}") from exc
        except StoreUnavailable as exc:
            raise HTTPException(
                503, f"the approval store is unavailable; nothing was decided: {exc}"
            ) from exc
        decided = approval_json(approval, calls=calls)
        grant = verdict.grant if isinstance(verdict, Approve) else None
        if grant is not None and grants is not None and approval.status is not ApprovalStatus.PENDING:
            # The grant, if the quorum's narrowest request made one (its id derives from the approval's).
            with contextlib.suppress(StoreUnavailable):
                made = await grants.store.get(f"g-{approval.id}")
                decided["grant"] = None if made is None else grant_json(made, grants.now())
        return decided

    @router.post("/{approval_id}/approve")
    async def approve(
        approval_id: str, caller: Caller, body: Annotated[DecisionBody | None, Body()] = None
    ) -> dict[str, Any]:
        if body is None:
            return await decide(approval_id, caller, Approve())
        grant = body.grant.request() if body.grant is not None else None
        return await decide(
            approval_id, caller, Approve(body.reason, body.edits, body.arguments_sha256, grant=grant)
        )

    @router.post("/{approval_id}/deny")
    async def deny(
        approval_id: str, caller: Caller, body: Annotated[DecisionBody | None, Body()] = None
    ) -> dict[str, Any]:
        if body is not None and body.grant is not None:
            raise HTTPException(422, "a grant goes with an approval, not with a denial")
        return await decide(approval_id, caller, Deny(body.reason if body else None))

    return router
