"""Single sign-on for the web inbox: the OpenID Connect authorization code flow with PKCE.

``GET /signin/oidc?next=/path`` sends the browser to the identity provider with a fresh
``state``, ``nonce`` and PKCE S256 challenge; the three secrets (and where to go afterwards) ride
in a short-lived cookie sealed with the session secret, so any replica can finish the sign-in.
``GET /signin/oidc/callback`` checks the ``state`` against that cookie, trades the code for
tokens (sending the PKCE verifier), verifies the ID token (broker.channels.sso.provider: keys,
``iss``, ``aud``, expiry, ``nonce``) and signs in the approver it names
(broker.channels.sso.identity). The cookie is spent by the callback, so a replayed callback
finds none.

``POST /logout`` of a session signed on here also signs out at the provider when its discovery
names an ``end_session_endpoint`` (OpenID Connect RP-Initiated Logout): the broker's session
ends first, then the browser goes there with ``id_token_hint`` (the sign-on's ID token, which
the session keeps unless it is over `MAX_ID_TOKEN_HINT` characters: the cookie has to stay
under the browsers' 4 KB), ``client_id`` and ``post_logout_redirect_uri`` (the inbox's
``/login`` unless configured). Without that endpoint, or with the provider unreachable, logout
stays local.

Every failure ends on a page that says what happened and a log line, without a session: an
identity that matches no approver (403), a missing or mismatched state (400), an error from the
provider or a code it refuses (401), an ID token that does not verify (401), a provider that
cannot be reached or answers garbage (502).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.clock import Clock
from broker.channels.sso.identity import CREDENTIAL_PREFIX, credential_of, match_claims
from broker.channels.sso.provider import IdentityProvider, ProviderUnavailable, TokenRejected
from broker.channels.web.origin import local_target
from broker.channels.web.sessions import Session

if TYPE_CHECKING:
    from broker.channels.web.inbox import WebInbox

logger = logging.getLogger(__name__)

PENDING_COOKIE = "broker_sso"
PENDING_PURPOSE = "oidc-signin"
PENDING_MAX_AGE = timedelta(minutes=10)
CALLBACK_PATH = "/signin/oidc/callback"
MAX_ID_TOKEN_HINT = 2048


class OidcSignin:
    def __init__(
        self, inbox: WebInbox, provider: IdentityProvider, directory: ApproverDirectory, clock: Clock
    ) -> None:
        self._inbox = inbox
        self._directory = directory
        self._clock = clock
        self._provider = provider
        self._settings = provider.settings

    def _redirect_uri(self, request: Request) -> str:
        if self._settings.redirect_uri is not None:
            return self._settings.redirect_uri
        return str(request.base_url).rstrip("/") + CALLBACK_PATH

    def _refuse(self, request: Request, status: int, title: str, message: str) -> Response:
        inbox = self._inbox
        response = inbox._message(
            request, inbox.signin.viewer(request), status=status, title=title, message=message
        )
        response.delete_cookie(PENDING_COOKIE, path="/signin/oidc", httponly=True, samesite="lax")
        return response

    def _unreachable(self, request: Request, exc: ProviderUnavailable) -> Response:
        logger.warning("single sign-on: identity provider unavailable: %s", exc)
        return self._refuse(
            request,
            502,
            "Identity provider unavailable",
            "The broker cannot reach the identity provider right now, so nobody can sign on. "
            "Try again in a moment, or sign in with a password if you have one.",
        )

    async def start(self, request: Request) -> Response:
        target = local_target(request.query_params.get("next"))
        state, nonce, verifier = (
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(48),
        )
        try:
            url = await self._provider.authorization_url(
                redirect_uri=self._redirect_uri(request), state=state, nonce=nonce, code_verifier=verifier
            )
        except ProviderUnavailable as exc:
            return self._unreachable(request, exc)
        response = RedirectResponse(url, status_code=303)
        sealed = self._inbox.signin.signer.seal(
            PENDING_PURPOSE, {"state": state, "nonce": nonce, "verifier": verifier, "next": target}
        )
        response.set_cookie(
            PENDING_COOKIE,
            sealed,
            max_age=int(PENDING_MAX_AGE.total_seconds()),
            path="/signin/oidc",
            httponly=True,
            # Lax: the provider's redirect back is a top-level GET from its site, which Lax lets through.
            samesite="lax",
            secure=self._inbox.signin.secure_cookies(request),
        )
        return response

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        pending = self._inbox.signin.signer.unseal(
            PENDING_PURPOSE, request.cookies.get(PENDING_COOKIE), max_age=PENDING_MAX_AGE
        )
        address = request.client.host if request.client is not None else "unknown"
        if pending is None:
            logger.warning("single sign-on callback from %s without a sign-in in progress", address)
            return self._refuse(
                request,
                400,
                "Sign-in not in progress",
                "This sign-in was not started from this browser, was finished already or took over "
                f"{int(PENDING_MAX_AGE.total_seconds() // 60)} minutes. Start again from the sign-in page.",
            )
        if "error" in params:
            error, description = params.get("error", ""), params.get("error_description", "")
            logger.warning(
                "single sign-on: the identity provider answered %s (%s) for %s", error, description, address
            )
            return self._refuse(
                request,
                401,
                "Sign-in refused",
                f"The identity provider refused the sign-in: {error} {description}".strip(),
            )
        state, code = params.get("state"), params.get("code")
        if not state or not code or not _same(state, pending.get("state", "")):
            logger.warning("single sign-on callback from %s with a missing or wrong state", address)
            return self._refuse(
                request,
                400,
                "Sign-in not in progress",
                "The answer from the identity provider does not belong to the sign-in this browser "
                "started. Start again from the sign-in page.",
            )
        try:
            tokens = await self._provider.exchange_code(
                code, redirect_uri=self._redirect_uri(request), code_verifier=pending.get("verifier", "")
            )
            id_token = tokens.get("id_token")
            if not isinstance(id_token, str):
                raise TokenRejected("the provider sent no ID token (is openid among the scopes?)")
            claims = await self._provider.verify_id_token(id_token, nonce=pending.get("nonce", ""))
        except ProviderUnavailable as exc:
            return self._unreachable(request, exc)
        except TokenRejected as exc:
            logger.warning("single sign-on from %s refused: %s", address, exc)
            return self._refuse(request, 401, "Sign-in refused", f"The sign-in could not be verified: {exc}.")
        matched = match_claims(claims, self._directory, self._settings)
        credential = credential_of(matched.account, self._settings) if matched.account is not None else None
        if matched.account is None or credential is None:
            logger.warning("single sign-on from %s refused: %s", address, matched.refusal)
            return self._refuse(
                request,
                403,
                "Not an approver",
                f"You signed in at the identity provider, but {matched.refusal}. "
                "Ask whoever runs the broker to add you to its approvers.",
            )
        logger.info("web sign-in (single sign-on): %s from %s", matched.account.name, address)
        session = Session.signed_in(
            matched.account.name,
            credential,
            self._clock(),
            groups=tuple(sorted(matched.groups)),
            id_token=id_token if len(id_token) <= MAX_ID_TOKEN_HINT else None,
        )
        response = RedirectResponse(pending.get("next", "/"), status_code=303)
        self._inbox.signin.write_cookie(response, session, request)
        response.delete_cookie(PENDING_COOKIE, path="/signin/oidc", httponly=True, samesite="lax")
        return response

    async def logout_target(self, request: Request, session: Session) -> str | None:
        """The provider's end-session URL for a session signed on here; None: log out locally only."""
        if not (session.credential or "").startswith(CREDENTIAL_PREFIX):
            return None
        back = self._settings.post_logout_redirect_uri or str(request.base_url).rstrip("/") + "/login"
        try:
            return await self._provider.end_session_url(
                id_token_hint=session.id_token, post_logout_redirect_uri=back
            )
        except ProviderUnavailable as exc:
            logger.warning("single sign-on logout of %s stays local: %s", session.user, exc)
            return None

    def register(self, router: APIRouter) -> None:
        @router.get("/signin/oidc")
        async def oidc_start(request: Request) -> Response:
            return await self.start(request)

        @router.get(CALLBACK_PATH)
        async def oidc_callback(request: Request) -> Response:
            return await self.callback(request)


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
