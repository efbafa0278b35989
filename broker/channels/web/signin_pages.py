"""Signing in and out of the web inbox with a user name and password (single sign-on is
broker.channels.web.oidc): the form, its POST, throttled per account and address (see signin),
and ``POST /logout``, which ends a single sign-on at the provider too (see oidc).

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from broker.channels.web.origin import local_target
from broker.channels.web.sessions import Session
from broker.channels.web.signin import Viewer

if TYPE_CHECKING:
    from broker.channels.web.inbox import WebInbox

logger = logging.getLogger(__name__)


class SigninPages:
    def __init__(self, inbox: "WebInbox") -> None:
        self._inbox = inbox

    async def login_form(self, request: Request) -> Response:
        viewer = self._inbox.signin.viewer(request)
        target = local_target(request.query_params.get("next"))
        if viewer.account is not None:
            return RedirectResponse(target, status_code=303)
        return self._inbox._page(request, viewer, "login.html", next=target, error=None, username="")

    async def login(self, request: Request) -> Response:
        viewer = self._inbox.signin.viewer(request)
        form = await self._inbox._posted_form(request, viewer)
        if isinstance(form, Response):
            return form
        username = str(form.get("username") or "").strip()
        password = str(form.get("password") or "")
        target = local_target(str(form.get("next") or ""))
        address = request.client.host if request.client is not None else "unknown"
        if not username or not password:
            return self._inbox._page(
                request,
                viewer,
                "login.html",
                status=400,
                next=target,
                error="Enter your user name and password.",
                username=username,
            )
        outcome = await self._inbox.signin.sign_in(username, password, address)
        if outcome.retry_after is not None:
            minutes = max(1, round(outcome.retry_after.total_seconds() / 60))
            logger.warning("web sign-in for %r from %s throttled", username, address)
            return self._inbox._page(
                request,
                viewer,
                "login.html",
                status=429,
                next=target,
                error=f"Too many failed sign-ins. Try again in about {minutes} minute{'s' if minutes > 1 else ''}.",
                username=username,
            )
        if outcome.account is None:
            logger.warning("web sign-in failed for %r from %s", username, address)
            return self._inbox._page(
                request,
                viewer,
                "login.html",
                status=401,
                next=target,
                error="Wrong user name or password.",
                username=username,
            )
        logger.info("web sign-in: %s from %s", outcome.account.name, address)
        response = RedirectResponse(target, status_code=303)
        self._inbox.signin.write_cookie(response, self._inbox.signin.session_for(outcome.account), request)
        return response

    async def logout(self, request: Request) -> Response:
        viewer = self._inbox.signin.viewer(request)
        refused = await self._inbox._posted_form(request, viewer)
        if isinstance(refused, Response):
            return refused
        oidc = self._inbox._oidc
        target = await oidc.logout_target(request, viewer.session) if oidc is not None else None
        response = (
            RedirectResponse("/login", status_code=303) if target is None else self._onward(request, target)
        )
        self._inbox.signin.clear_cookie(response, request)
        return response

    def _onward(self, request: Request, target: str) -> Response:
        """A signed-out page that moves on to the identity provider's logout by itself: the pages'
        CSP lets forms go to the broker only (``form-action 'self'``), and browsers hold a form's
        redirects to that too, so a 303 from this POST would leave the browser where it was."""
        signed_out = Viewer(Session.anonymous(self._inbox._clock()), None)
        return self._inbox._page(
            request,
            signed_out,
            "message.html",
            title="Signed out",
            message="You are signed out of the broker. Now signing you out at the identity provider too.",
            link=(target, "Sign out at the identity provider"),
            refresh=target,
        )

    def register(self, router: APIRouter) -> None:
        @router.get("/login")
        async def login_form(request: Request) -> Response:
            return await self.login_form(request)

        @router.post("/login")
        async def login(request: Request) -> Response:
            return await self.login(request)

        @router.post("/logout")
        async def logout(request: Request) -> Response:
            return await self.logout(request)
