"""The web inbox's grants: the grant option beside Approve, and the ``/grants`` page.

The option (``_grant_option.html``) shows only when the rule that held the call, as the policy in
force still decides it at the same revision, has a ``grant`` setting; its fields are bounded by
that rule, and the service checks them again (broker.approvals.grant_making). ``/grants`` lists
grants newest first with their use and state, and any signed-in approver may revoke one (a POST
with the session's CSRF token, like every decision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from broker.approvals.grant_desk import GrantDesk
from broker.approvals.grants import GrantRequest, GrantScope
from broker.approvals.model import Approval
from broker.approvals.ports import GrantNotFound, StoreUnavailable
from broker.policy import Policy
from broker.policy.decision import Action
from broker.policy.grants import GrantAllowance

if TYPE_CHECKING:
    from broker.channels.web.inbox import WebInbox


def grant_allowance(policy: Callable[[], Policy]) -> Callable[[Approval], GrantAllowance | None]:
    """For templates: what approvers may grant beside approving `approval` now, or None."""

    def allowance(approval: Approval) -> GrantAllowance | None:
        decision = policy().decide(
            approval.upstream_tool,
            server=approval.server,
            agent=approval.agent,
            arguments=approval.as_decided(),
        )
        if (
            decision.action is not Action.REQUIRE_APPROVAL
            or decision.rule != approval.rule
            or decision.revision != approval.policy_revision
            or decision.approval is None
        ):
            return None
        return decision.approval.grant

    return allowance


def grant_from_form(form: FormData) -> GrantRequest | str | None:
    """The grant asked for beside Approve; None for none; a message for a malformed field."""
    minutes = str(form.get("grant_minutes") or "").strip()
    if not minutes:
        return None
    calls = str(form.get("grant_calls") or "").strip()
    scope = str(form.get("grant_scope") or GrantScope.IDENTICAL.value)
    try:
        return GrantRequest(float(minutes) * 60, GrantScope(scope), int(calls) if calls else None)
    except ValueError:
        return "The grant needs a positive number of minutes, a scope of identical or matching and a whole number of calls; nothing was decided."


class GrantsPage:
    def __init__(self, inbox: WebInbox, desk: GrantDesk) -> None:
        self._inbox = inbox
        self._desk = desk

    async def page(self, request: Request) -> Response:
        inbox = self._inbox
        viewer = inbox._gate(request)
        if isinstance(viewer, Response):
            return viewer
        try:
            grants = await self._desk.list(limit=200)
        except StoreUnavailable as exc:
            return inbox._unavailable(request, viewer, exc)
        return inbox._page(
            request, viewer, "grants.html", section="grants", grants=grants, now=self._desk.now()
        )

    async def revoke(self, request: Request, grant_id: str) -> Response:
        inbox = self._inbox
        viewer = inbox.signin.viewer(request)
        refused = await inbox._posted_form(request, viewer)
        if isinstance(refused, Response):
            return refused
        if viewer.approver is None:
            return inbox._message(
                request, viewer, status=403, title="Signed out", message="Sign in again, then revoke."
            )
        try:
            await self._desk.revoke(grant_id, approver=viewer.approver)
        except GrantNotFound:
            return inbox._message(
                request, viewer, status=404, title="No such grant", message=f"There is no grant {grant_id}."
            )
        except StoreUnavailable as exc:
            return inbox._unavailable(request, viewer, exc)
        return RedirectResponse("/grants", status_code=303)

    def register(self, router: APIRouter) -> None:
        @router.get("/grants")
        async def grants(request: Request) -> Response:
            return await self.page(request)

        @router.post("/grants/{grant_id}/revoke")
        async def revoke(request: Request, grant_id: str) -> Response:
            return await self.revoke(request, grant_id)
