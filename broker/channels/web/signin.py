"""Who is looking at the inbox: a password or single sign-on session, or a user vouched for by a trusted proxy.

A request is answered for exactly one `Viewer`. Passwords are checked against the scrypt hashes
in the configuration; a session records a fingerprint of the hash it was checked against, so
changing or removing a password ends that person's sessions; a single sign-on session records
a fingerprint of the ``oidc_sub`` or ``email`` it matched (broker.channels.sso.identity), with
the same effect. A proxy's header is believed only
when the TCP peer is one of the configured proxy addresses, and only for that request: a cookie
obtained through the proxy does not sign anybody in without it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import anyio
from starlette.requests import Request
from starlette.responses import Response

from broker.approvals.approvers import ApproverAccount, ApproverDirectory
from broker.approvals.clock import Clock, utc_now
from broker.approvals.model import Approver
from broker.channels.sso.identity import CREDENTIAL_PREFIX, credential_of
from broker.channels.web.passwords import (
    PasswordHashError,
    ScryptHash,
    hash_password,
    parse_password_hash,
    verify_password,
)
from broker.channels.web.sessions import COOKIE_NAME, Session, SessionSigner, password_fingerprint
from broker.channels.web.throttle import SigninThrottle
from broker.config.web import WebSettings

logger = logging.getLogger(__name__)

PROXY_CREDENTIAL = "proxy"
SESSION_MAX_AGE = timedelta(hours=12)
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class Viewer:
    session: Session
    account: ApproverAccount | None
    """The approver signed in, or None."""
    proxy_user: str | None = None
    """A name the trusted proxy vouched for that has no approver account here."""
    fresh: bool = False
    """The session is new and must be written to the cookie."""

    @property
    def approver(self) -> Approver | None:
        if self.account is None:
            return None
        if not self.session.groups:
            return self.account.approver
        return Approver(self.account.name, self.account.groups | frozenset(self.session.groups))


@dataclass(frozen=True, slots=True)
class SigninOutcome:
    account: ApproverAccount | None
    retry_after: timedelta | None = None
    """Set when the attempt was refused unchecked because of too many recent failures."""


class WebSignin:
    def __init__(
        self,
        directory: ApproverDirectory,
        settings: WebSettings,
        *,
        clock: Clock = utc_now,
        session_max_age: timedelta = SESSION_MAX_AGE,
    ) -> None:
        self._directory = directory
        self._settings = settings
        self._clock = clock
        # A random secret keeps sessions unforgeable but ends them on restart and does not carry
        # across replicas; `web.session_secret_env` fixes both.
        secret = settings.session_secret.encode("utf-8") if settings.session_secret else os.urandom(32)
        self.signer = SessionSigner(secret, max_age=session_max_age, clock=clock)
        self.throttle = SigninThrottle(clock=clock)
        self._hashes: dict[str, ScryptHash] = {}
        for account in directory.accounts():
            if account.password_hash is None:
                continue
            try:
                self._hashes[account.name] = parse_password_hash(account.password_hash)
            except PasswordHashError as exc:
                logger.error("approver %s cannot sign in to the web inbox: %s", account.name, exc)
        self._decoy: ScryptHash | None = None
        # scrypt takes tens of megabytes per check: a few at a time, whatever the thread pool size.
        self._hashing = anyio.CapacityLimiter(2)

    @property
    def password_accounts(self) -> int:
        return len(self._hashes)

    # -- who is asking ------------------------------------------------------------------------

    def viewer(self, request: Request) -> Viewer:
        now = self._clock()
        session = self.signer.loads(request.cookies.get(COOKIE_NAME))
        vouched = self._vouched_user(request)
        if vouched is not None:
            account = self._directory.by_name(vouched)
            stranger = None if account is not None else vouched
            if session is not None and session.user == vouched and session.credential == PROXY_CREDENTIAL:
                return Viewer(session, account, proxy_user=stranger)
            session = Session.signed_in(vouched, PROXY_CREDENTIAL, now)
            return Viewer(session, account, proxy_user=stranger, fresh=True)
        if session is None:
            return Viewer(Session.anonymous(now), None, fresh=True)
        if session.user is None:
            return Viewer(session, None)
        account = self._directory.by_name(session.user)
        if account is None or not self._credential_still_valid(account, session):
            return Viewer(Session.anonymous(now), None, fresh=True)
        return Viewer(session, account)

    def _credential_still_valid(self, account: ApproverAccount, session: Session) -> bool:
        if session.credential is not None and session.credential.startswith(CREDENTIAL_PREFIX):
            sso = self._settings.sso
            return sso is not None and credential_of(account, sso) == session.credential
        if session.credential == PROXY_CREDENTIAL or account.password_hash is None:
            return False
        return password_fingerprint(account.password_hash) == session.credential

    def _vouched_user(self, request: Request) -> str | None:
        header = self._settings.trusted_header
        if not header or not self.from_trusted_proxy(request):
            return None
        value = request.headers.get(header, "").strip()
        return value or None

    def from_trusted_proxy(self, request: Request) -> bool:
        if request.client is None or not self._settings.trusted_proxies:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in network for network in self._settings.trusted_proxies)

    # -- signing in -----------------------------------------------------------------------------

    async def sign_in(self, user: str, password: str, address: str) -> SigninOutcome:
        wait = self.throttle.begin(user, address)
        if wait is not None:
            return SigninOutcome(None, retry_after=wait)
        account = self._directory.by_name(user)
        stored = self._hashes.get(user) if account is not None else None
        signed_in = False
        try:
            # An unknown name costs as much as a wrong password, so timing does not reveal who exists.
            target = stored if stored is not None else await self._decoy_hash()
            candidate = password[:MAX_PASSWORD_LENGTH]
            matches = await anyio.to_thread.run_sync(
                verify_password, candidate, target, limiter=self._hashing
            )
            signed_in = account is not None and stored is not None and matches
        finally:
            if signed_in:
                self.throttle.succeeded(user, address)
            else:
                self.throttle.failed(user, address)
        return SigninOutcome(account if signed_in else None)

    def session_for(self, account: ApproverAccount) -> Session:
        if account.password_hash is None:
            raise ValueError(f"{account.name} has no password and cannot hold a password session")
        return Session.signed_in(account.name, password_fingerprint(account.password_hash), self._clock())

    async def _decoy_hash(self) -> ScryptHash:
        if self._decoy is None:
            encoded = await anyio.to_thread.run_sync(
                hash_password, os.urandom(16).hex(), limiter=self._hashing
            )
            self._decoy = parse_password_hash(encoded)
        return self._decoy

    # -- cookies ----------------------------------------------------------------------------------

    def secure_cookies(self, request: Request) -> bool:
        if self._settings.cookie_secure is not None:
            return self._settings.cookie_secure
        if request.url.scheme == "https":
            return True
        return self.from_trusted_proxy(request) and request.headers.get("x-forwarded-proto") == "https"

    def write_cookie(self, response: Response, session: Session, request: Request) -> None:
        response.set_cookie(
            COOKIE_NAME,
            self.signer.dumps(session),
            max_age=int(self.signer.max_age.total_seconds()),
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies(request),
        )

    def clear_cookie(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            COOKIE_NAME, path="/", httponly=True, samesite="lax", secure=self.secure_cookies(request)
        )
