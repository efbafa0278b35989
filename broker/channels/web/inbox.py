"""The web inbox: the list of waiting calls, history, tools and the live event stream, and the
shared rendering and guards its other pages use (one approval: decisions; signing in: signin_pages,
oidc; grants: grants_page).

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.call_view import CallContexts, ToolFacts
from broker.approvals.clock import Clock, utc_now
from broker.approvals.grant_desk import GrantDesk
from broker.approvals.model import Approval, ApprovalStatus, Approver
from broker.approvals.ports import ListPosition, StoreUnavailable
from broker.approvals.service import ApprovalService
from broker.channels.call_context import CallContextSource
from broker.channels.sso.provider import IdentityProvider
from broker.channels.web.assets import InboxAssets
from broker.channels.web.decisions import ApprovalPages
from broker.channels.web.events import EventStreamResponse, InboxEvents
from broker.channels.web.export import HistoryExport
from broker.channels.web.filters import ListFilters, read_filters
from broker.channels.web.grants_page import GrantsPage, grant_allowance
from broker.channels.web.hardening import HardenedRoute
from broker.channels.web.oidc import OidcSignin
from broker.channels.web.origin import OriginCheck
from broker.channels.web.presenters import COUNT_CAP, HISTORY_STATUSES, template_environment
from broker.channels.web.signin import Viewer, WebSignin
from broker.channels.web.signin_pages import SigninPages
from broker.channels.web.tools_view import ToolSources, tool_rows
from broker.config.policy_file import ReloadRejection
from broker.config.web import WebSettings

logger = logging.getLogger(__name__)

INBOX_PAGE = 50
HISTORY_PAGE = 50


class WebInbox:
    """The inbox's pages and endpoints over one approval service; `router()` mounts them at the root."""

    def __init__(
        self,
        service: ApprovalService,
        directory: ApproverDirectory,
        settings: WebSettings,
        *,
        events: InboxEvents,
        tools: ToolSources,
        calls: CallContexts | None = None,
        clock: Clock = utc_now,
        policy_rejection: Callable[[], ReloadRejection | None] = lambda: None,
        demo: bool = False,
        grants: GrantDesk | None = None,
        identity_provider: IdentityProvider | None = None,
    ) -> None:
        self._grants = grants
        self._policy_rejection = policy_rejection
        self._demo = demo
        self._service = service
        self._store = service.store
        self._events = events
        self._tools = tools
        self._clock = clock
        self.signin = WebSignin(directory, settings, clock=clock)
        self._origin = OriginCheck(self.signin.from_trusted_proxy)
        self._oidc = OidcSignin(self, identity_provider, directory, clock) if identity_provider else None
        self._calls = calls or CallContextSource(
            store=service.store, policy=tools.policy, tools=tools.tools, held_here=service.held_here
        )
        self._templates = template_environment()
        # Rows and panels render each call's fields and risk badge through these (see _call*.html).
        self._templates.globals.update(call_of=self._calls.view, tool_of=self._tool_facts)
        self._templates.globals.update(
            grant_allowance=grant_allowance(tools.policy) if grants else lambda _: None
        )
        self._templates.globals.update(
            sso_label=identity_provider.settings.label if identity_provider else None,
            password_signin=self.signin.password_accounts > 0 or identity_provider is None,
        )
        self._static = InboxAssets()
        self._export = HistoryExport(self._store, HISTORY_STATUSES)

    # -- rendering ---------------------------------------------------------------------------------

    def _page(
        self,
        request: Request,
        viewer: Viewer,
        template: str,
        *,
        status: int = 200,
        section: str | None = None,
        pending_count: int | None = None,
        **context: Any,
    ) -> HTMLResponse:
        html = self._templates.get_template(template).render(
            viewer=viewer,
            csrf_token=viewer.session.csrf_token,
            asset=self._static.url,
            section=section,
            pending_count=pending_count,
            policy_rejection=self._policy_rejection() if viewer.account is not None else None,
            demo=self._demo,
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
        if viewer.fresh:
            self.signin.write_cookie(response, viewer.session, request)
        return response

    def _message(
        self, request: Request, viewer: Viewer, *, status: int, title: str, message: str, **extra: Any
    ) -> HTMLResponse:
        return self._page(
            request, viewer, "message.html", status=status, title=title, message=message, **extra
        )

    def _unavailable(self, request: Request, viewer: Viewer, exc: StoreUnavailable) -> HTMLResponse:
        logger.warning("web inbox: approval store unavailable: %s", exc)
        return self._message(
            request,
            viewer,
            status=503,
            title="Approval store unavailable",
            message="The broker cannot reach its approval store right now, so nothing can be shown or "
            "decided. Held calls stay held. Try again in a moment.",
        )

    def _gate(self, request: Request) -> Viewer | Response:
        """The signed-in viewer, or the response that sends everybody else to sign in."""
        viewer = self.signin.viewer(request)
        if viewer.account is not None:
            return viewer
        if viewer.proxy_user is not None:
            return self._message(
                request,
                viewer,
                status=403,
                title="Not an approver",
                message=f"The sign-in proxy says you are {viewer.proxy_user}, but {viewer.proxy_user} is "
                "not an approver in this broker's configuration.",
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        if viewer.fresh:
            self.signin.write_cookie(response, viewer.session, request)
        return response

    def _fragment_gate(self, request: Request) -> Viewer | Response:
        viewer = self.signin.viewer(request)
        if viewer.account is None:
            return PlainTextResponse("sign in first", status_code=401)
        return viewer

    def _tool_facts(self, approval: Approval) -> ToolFacts:
        return self._calls.tool(approval.server, approval.upstream_tool)

    async def _pending_count(self) -> int:
        return await self._store.pending_count(at_most=COUNT_CAP)

    def _row(self, approval: Approval, approver: Approver | None) -> dict[str, Any]:
        """One inbox row: whether this viewer may decide it, and if not why (the row's hint), and
        whether their yes already counts toward its quorum (the call then waits on others, not them)."""
        refusal = (
            "You are not signed in as an approver"
            if approver is None
            else self._service.may_decide(approval, approver)
        )
        voted = approver is not None and approval.has_vote_from(approver.name)
        return {"approval": approval, "can_decide": refusal is None, "refusal": refusal, "voted": voted}

    # -- inbox ---------------------------------------------------------------------------------------

    async def _inbox_context(self, viewer: Viewer, filters: ListFilters) -> dict[str, Any]:
        now = self._clock()
        approver = viewer.approver
        base = {"filters": filters, "problems": filters.problems, "older": None, "newest": None}
        if filters.problems:
            return {**base, "rows": [], "pending_count": await self._pending_count(), "live_query": ""}
        pending = await self._store.list(
            statuses={ApprovalStatus.PENDING},
            agent=filters.agent or None,
            tool=filters.tool or None,
            search=filters.q or None,
            after=filters.after,
            limit=INBOX_PAGE,
        )
        # The sweeper may not have expired these yet; they can no longer be approved, so they are not shown.
        rows = [self._row(approval, approver) for approval in pending if not approval.is_overdue(now)]
        if len(pending) == INBOX_PAGE:
            base["older"] = filters.link("/", after=ListPosition.of(pending[-1]).token())
        if filters.after is not None:
            base["newest"] = filters.link("/")
        after = filters.after.token() if filters.after is not None else ""
        return {
            **base,
            "rows": rows,
            "pending_count": await self._pending_count(),
            "live_query": filters.query(after=after),
        }

    async def inbox(self, request: Request) -> Response:
        viewer = self._gate(request)
        if isinstance(viewer, Response):
            return viewer
        filters = read_filters(request.query_params)
        try:
            context = await self._inbox_context(viewer, filters)
        except StoreUnavailable as exc:
            return self._unavailable(request, viewer, exc)
        status = 400 if filters.problems else 200
        return self._page(request, viewer, "inbox.html", status=status, section="inbox", **context)

    async def inbox_rows(self, request: Request) -> Response:
        viewer = self._fragment_gate(request)
        if isinstance(viewer, Response):
            return viewer
        try:
            context = await self._inbox_context(viewer, read_filters(request.query_params))
        except StoreUnavailable:
            return PlainTextResponse("approval store unavailable", status_code=503)
        return self._page(request, viewer, "inbox_rows.html", **context)

    # -- history ------------------------------------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        viewer = self._gate(request)
        if isinstance(viewer, Response):
            return viewer
        filters = read_filters(request.query_params, statuses=HISTORY_STATUSES)
        context: dict[str, Any] = {"filters": filters, "statuses": HISTORY_STATUSES}
        if filters.problems:
            return self._page(
                request,
                viewer,
                "history.html",
                status=400,
                section="history",
                approvals=[],
                problems=filters.problems,
                older=None,
                newest="/history",
                **context,
            )
        try:
            approvals = await self._store.list(
                statuses=filters.statuses(HISTORY_STATUSES),
                agent=filters.agent or None,
                tool=filters.tool or None,
                search=filters.q or None,
                limit=HISTORY_PAGE,
                before=filters.before,
                after=filters.after,
            )
            count = await self._pending_count()
        except StoreUnavailable as exc:
            return self._unavailable(request, viewer, exc)
        older = None
        if len(approvals) == HISTORY_PAGE:
            older = filters.link("/history", after=ListPosition.of(approvals[-1]).token())
        return self._page(
            request,
            viewer,
            "history.html",
            section="history",
            pending_count=count,
            approvals=approvals,
            problems=(),
            older=older,
            newest=filters.link("/history") if filters.paged else None,
            **context,
        )

    async def history_export(self, request: Request, kind: str) -> Response:
        viewer = self._gate(request)
        if isinstance(viewer, Response):
            return viewer
        filters = read_filters(request.query_params, statuses=HISTORY_STATUSES)
        if filters.problems:
            return PlainTextResponse("; ".join(filters.problems), status_code=400)
        try:
            return await self._export.response(filters, kind)
        except StoreUnavailable as exc:
            logger.warning("history export: approval store unavailable: %s", exc)
            return PlainTextResponse("the approval store is unavailable; try again", status_code=503)

    # -- tools ----------------------------------------------------------------------------------------------

    async def tools(self, request: Request) -> Response:
        viewer = self._gate(request)
        if isinstance(viewer, Response):
            return viewer
        try:
            count = await self._pending_count()
        except StoreUnavailable as exc:
            return self._unavailable(request, viewer, exc)
        policy = self._tools.policy()
        return self._page(
            request,
            viewer,
            "tools.html",
            section="tools",
            pending_count=count,
            tools=tool_rows(self._tools, policy),
            servers=self._tools.servers(),
            policy_revision=policy.revision,
        )

    # -- guards for every state-changing route ---------------------------------------------------------------------------------

    async def _posted_form(self, request: Request, viewer: Viewer) -> FormData | Response:
        """A state-changing POST's form, or the refusal of a cross-site one or one without the
        session's CSRF token; the origin is checked before the form is read (see `origin`)."""
        refused = self._refuse_cross_site(request, viewer)
        if refused is not None:
            return refused
        form = await request.form()
        return self._check_csrf(request, viewer, form) or form

    def _refuse_cross_site(self, request: Request, viewer: Viewer) -> Response | None:
        refusal = self._origin.refusal(request)
        if refusal is None:
            return None
        return self._message(
            request,
            viewer,
            status=403,
            title="Cross-site request refused",
            message=f"Nothing was done: {refusal}.",
        )

    def _check_csrf(self, request: Request, viewer: Viewer, form: FormData) -> Response | None:
        submitted = form.get("csrf_token")
        if viewer.fresh or not viewer.session.csrf_matches(submitted if isinstance(submitted, str) else None):
            return self._message(
                request,
                viewer,
                status=403,
                title="Form expired",
                message="This form's security token is missing or out of date, so nothing was done. "
                "Go back, reload the page and try again.",
            )
        return None

    # -- live updates and assets --------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        viewer = self._fragment_gate(request)
        if isinstance(viewer, Response):
            return viewer
        return EventStreamResponse(self._events)

    # -- routing -----------------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(route_class=HardenedRoute, include_in_schema=False)
        inbox = self

        @router.get("/")
        async def inbox_page(request: Request) -> Response:
            return await inbox.inbox(request)

        @router.get("/inbox/rows")
        async def inbox_rows(request: Request) -> Response:
            return await inbox.inbox_rows(request)

        @router.get("/history")
        async def history(request: Request) -> Response:
            return await inbox.history(request)

        @router.get("/history.csv")
        async def history_csv(request: Request) -> Response:
            return await inbox.history_export(request, "csv")

        @router.get("/history.json")
        async def history_json(request: Request) -> Response:
            return await inbox.history_export(request, "json")

        @router.get("/tools")
        async def tools(request: Request) -> Response:
            return await inbox.tools(request)

        @router.get("/events")
        async def events(request: Request) -> Response:
            return await inbox.events(request)

        ApprovalPages(self).register(router)
        SigninPages(self).register(router)
        if self._grants is not None:
            GrantsPage(self, self._grants).register(router)
        if self._oidc is not None:
            self._oidc.register(router)

        @router.get("/static/{name}")
        async def static(name: str) -> Response:
            return inbox._static.response(name)

        return router
