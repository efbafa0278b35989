"""One approval in the web inbox: its page, the live panel that page refreshes, and the
Approve/Deny form's POSTs (with a reason, edited arguments, a grant), which the approval service
decides; a decision that lost a race shows who won instead.

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from broker.approvals.audit import AuditRecord
from broker.approvals.call_view import CallContext
from broker.approvals.deciding import NotAllowedToDecide
from broker.approvals.edits import EditRefused
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import (
    ApprovalNotFound,
    ArgumentsChanged,
    InvalidTransition,
    InvalidValue,
    StoreUnavailable,
)
from broker.approvals.verdict import Approve, Verdict, verdict_of
from broker.channels.web.edit_form import PREFIX as EDIT_PREFIX
from broker.channels.web.edit_form import edits_from_form
from broker.channels.web.grants_page import grant_from_form
from broker.channels.web.presenters import ending
from broker.channels.web.signin import Viewer

if TYPE_CHECKING:
    from broker.channels.web.inbox import WebInbox

MAX_REASON_LENGTH = 2000


class ApprovalPages:
    def __init__(self, inbox: "WebInbox") -> None:
        self._inbox = inbox

    def _detail_context(
        self,
        approval: Approval,
        trail: list[AuditRecord],
        context: CallContext,
        viewer: Viewer,
        notice: str | None = None,
    ) -> dict[str, Any]:
        approver = viewer.approver
        refusal = (
            self._inbox._service.may_decide(approval, approver) if approver is not None else "not signed in"
        )
        overdue = approval.is_overdue(self._inbox._clock())
        return {
            "approval": approval,
            "trail": trail,
            "call_context": context,
            "ending": ending(approval),
            "refusal": refusal,
            "overdue": overdue,
            "can_decide": approval.status is ApprovalStatus.PENDING and refusal is None and not overdue,
            "voted": approver is not None and approval.has_vote_from(approver.name),
            "notice": notice,
            "max_reason": MAX_REASON_LENGTH,
        }

    async def _load(self, approval_id: str) -> tuple[Approval, list[AuditRecord], CallContext] | None:
        approval = await self._inbox._store.get(approval_id)
        if approval is None:
            return None
        return (
            approval,
            await self._inbox._store.audit_trail(approval_id),
            await self._inbox._calls.context(approval),
        )

    def _not_found(self, request: Request, viewer: Viewer, approval_id: str) -> HTMLResponse:
        return self._inbox._message(
            request,
            viewer,
            status=404,
            title="No such approval",
            message=f"There is no approval {approval_id}.",
        )

    async def detail(self, request: Request, approval_id: str) -> Response:
        viewer = self._inbox._gate(request)
        if isinstance(viewer, Response):
            return viewer
        try:
            loaded = await self._load(approval_id)
            count = await self._inbox._pending_count()
        except StoreUnavailable as exc:
            return self._inbox._unavailable(request, viewer, exc)
        if loaded is None:
            return self._not_found(request, viewer, approval_id)
        context = self._detail_context(*loaded, viewer)
        return self._inbox._page(
            request, viewer, "detail.html", section="inbox", pending_count=count, **context
        )

    async def panel(self, request: Request, approval_id: str) -> Response:
        viewer = self._inbox._fragment_gate(request)
        if isinstance(viewer, Response):
            return viewer
        try:
            loaded = await self._load(approval_id)
        except StoreUnavailable:
            return PlainTextResponse("approval store unavailable", status_code=503)
        if loaded is None:
            return PlainTextResponse("no such approval", status_code=404)
        return self._inbox._page(request, viewer, "panel.html", **self._detail_context(*loaded, viewer))

    async def decide(self, request: Request, approval_id: str, *, approve: bool) -> Response:
        viewer = self._inbox.signin.viewer(request)
        form = await self._inbox._posted_form(request, viewer)
        if isinstance(form, Response):
            return form
        if viewer.approver is None:
            return self._inbox._message(
                request,
                viewer,
                status=403,
                title="Signed out",
                message="Your session has ended. Sign in again, then decide.",
                link=("/login?" + urlencode({"next": f"/approvals/{approval_id}"}), "Sign in"),
            )
        reason = str(form.get("reason") or "").strip() or None
        if reason is not None and len(reason) > MAX_REASON_LENGTH:
            return self._inbox._message(
                request,
                viewer,
                status=400,
                title="Reason too long",
                message=f"A reason may be at most {MAX_REASON_LENGTH} characters; nothing was decided.",
            )
        grant = grant_from_form(form) if approve else None
        if isinstance(grant, str):
            return self._inbox._message(request, viewer, status=400, title="Not decided", message=grant)
        try:
            verdict = await self._verdict(form, approval_id, approve, reason)
            if grant is not None and isinstance(verdict, Approve):
                verdict = replace(verdict, grant=grant)
            await self._inbox._service.decide(approval_id, verdict, approver=viewer.approver, via="web")
        except EditRefused as exc:
            return self._inbox._message(request, viewer, status=400, title="Edit refused", message=f"{exc}.")
        except ArgumentsChanged as exc:
            return self._inbox._message(
                request, viewer, status=409, title="Arguments changed", message=f"{exc}."
            )
        except ApprovalNotFound:
            return self._not_found(request, viewer, approval_id)
        except NotAllowedToDecide as exc:
            return self._inbox._message(
                request, viewer, status=403, title="Not allowed to decide", message=str(exc)
            )
        except InvalidTransition as exc:
            # Somebody (or the deadline) got there first: show who, instead of failing quietly.
            return await self._already_decided(request, viewer, exc.current)
        except InvalidValue as exc:
            return self._inbox._message(request, viewer, status=400, title="Not decided", message=str(exc))
        except StoreUnavailable as exc:
            return self._inbox._unavailable(request, viewer, exc)
        return RedirectResponse(f"/approvals/{approval_id}", status_code=303)

    async def _verdict(self, form: Any, approval_id: str, approve: bool, reason: str | None) -> Verdict:
        """Approve, Deny, or Approve with the edit form's arguments (see edit_form)."""
        seen = form.get("seen_hash")
        if not approve or not any(str(key).startswith(EDIT_PREFIX) for key in form):
            return verdict_of(approve, reason, seen_hash=str(seen) if seen else None)
        edits = edits_from_form(form, await self._inbox._store.get(approval_id))
        return Approve(reason, edits, str(seen) if seen else None)

    async def _already_decided(self, request: Request, viewer: Viewer, current: Approval) -> Response:
        try:
            trail = await self._inbox._store.audit_trail(current.id)
            call_context = await self._inbox._calls.context(current)
            count = await self._inbox._pending_count()
        except StoreUnavailable as exc:
            return self._inbox._unavailable(request, viewer, exc)
        context = self._detail_context(current, trail, call_context, viewer, notice="already")
        return self._inbox._page(
            request, viewer, "detail.html", status=409, section="inbox", pending_count=count, **context
        )

    def register(self, router: APIRouter) -> None:
        @router.get("/approvals/{approval_id}")
        async def approval_page(request: Request, approval_id: str) -> Response:
            return await self.detail(request, approval_id)

        @router.get("/approvals/{approval_id}/panel")
        async def approval_panel(request: Request, approval_id: str) -> Response:
            return await self.panel(request, approval_id)

        @router.post("/approvals/{approval_id}/approve")
        async def approve(request: Request, approval_id: str) -> Response:
            return await self.decide(request, approval_id, approve=True)

        @router.post("/approvals/{approval_id}/deny")
        async def deny(request: Request, approval_id: str) -> Response:
            return await self.decide(request, approval_id, approve=False)
