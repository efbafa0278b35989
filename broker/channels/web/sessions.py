"""Signed session cookies and the CSRF token each session carries.

The cookie holds the whole session (who, how they signed in, when, and the CSRF token) and an
HMAC-SHA256 over it, so any replica holding the same secret can read it and nobody without the
secret can mint or alter one. The CSRF token lives inside the signed, HttpOnly cookie: a page
from another site can make the browser send the cookie but can neither read the token nor
forge a cookie with a token of its choosing, so a form field matching it proves the request
came from one of our pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.approvals.clock import Clock

COOKIE_NAME = "broker_session"
_CONTEXT = b"mcp-approval-broker web session v1\x00"
# Sealed bodies are MACed under this prefix; session bodies are base64 and never contain NUL.
_SEALED = b"sealed\x00"


@dataclass(frozen=True, slots=True)
class Session:
    """`user` is None until someone signs in; every session, even an anonymous one, has a CSRF token.

    `credential` ties the session to how it was obtained: a fingerprint of the password hash it was
    checked against (so changing the password ends old sessions) or ``"proxy"`` for sessions that
    only stand while the trusted proxy keeps vouching for the user, or ``"oidc:..."`` for a
    single sign-on (see broker.channels.sso.identity). `groups` are the broker groups the identity
    provider vouched for at sign-on; `id_token` is the ID token of that sign-on, kept only to name
    the session to the provider at logout (``id_token_hint``).
    """

    csrf_token: str
    issued_at: datetime
    user: str | None = None
    credential: str | None = None
    groups: tuple[str, ...] = ()
    id_token: str | None = None

    @classmethod
    def anonymous(cls, now: datetime) -> Session:
        return cls(csrf_token=new_token(), issued_at=now)

    @classmethod
    def signed_in(
        cls,
        user: str,
        credential: str,
        now: datetime,
        *,
        groups: tuple[str, ...] = (),
        id_token: str | None = None,
    ) -> Session:
        # A fresh token on sign-in: a token planted before sign-in (session fixation) is worthless after.
        return cls(
            csrf_token=new_token(),
            issued_at=now,
            user=user,
            credential=credential,
            groups=groups,
            id_token=id_token,
        )

    def csrf_matches(self, submitted: str | None) -> bool:
        if not submitted:
            return False
        return hmac.compare_digest(submitted.encode("utf-8"), self.csrf_token.encode("utf-8"))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()[:16]


class SessionSigner:
    """Turns sessions into cookie values and back; a cookie older than `max_age` reads as no session."""

    def __init__(self, secret: bytes, *, max_age: timedelta, clock: Clock) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._key = hashlib.sha256(_CONTEXT + secret).digest()
        self.max_age = max_age
        self._clock = clock

    def dumps(self, session: Session) -> str:
        payload = json.dumps(
            {
                "c": session.csrf_token,
                "t": session.issued_at.timestamp(),
                "u": session.user,
                "k": session.credential,
                **({"g": list(session.groups)} if session.groups else {}),
                **({"i": session.id_token} if session.id_token is not None else {}),
            },
            separators=(",", ":"),
        ).encode("utf-8")
        body = _b64(payload)
        return f"{body}.{_b64(self._mac(body))}"

    def loads(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None when it is absent, tampered with, malformed or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        try:
            given = _unb64(signature)
        except ValueError:
            return None
        if not hmac.compare_digest(given, self._mac(body)):
            return None
        try:
            data = json.loads(_unb64(body))
        except ValueError:
            return None
        return self._session_from(data)

    def _session_from(self, data: object) -> Session | None:
        if not isinstance(data, dict):
            return None
        token, issued, user, credential = data.get("c"), data.get("t"), data.get("u"), data.get("k")
        if not isinstance(token, str) or not token or not isinstance(issued, int | float):
            return None
        if not isinstance(user, str | None) or not isinstance(credential, str | None):
            return None
        groups = data.get("g", [])
        if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
            return None
        id_token = data.get("i")
        if not isinstance(id_token, str | None):
            return None
        issued_at = datetime.fromtimestamp(issued, tz=self._clock().tzinfo)
        age = self._clock() - issued_at
        if age > self.max_age or age < -timedelta(minutes=5):
            return None
        return Session(
            csrf_token=token,
            issued_at=issued_at,
            user=user,
            credential=credential,
            groups=tuple(groups),
            id_token=id_token,
        )

    def seal(self, purpose: str, data: dict[str, str]) -> str:
        """`data` signed for one `purpose` (another purpose, or a session, cannot be passed off as it)."""
        payload = json.dumps({"p": purpose, "t": self._clock().timestamp(), "d": data}, separators=(",", ":"))
        body = _b64(payload.encode("utf-8"))
        return f"{body}.{_b64(self._mac(body, _SEALED))}"

    def unseal(self, purpose: str, cookie: str | None, *, max_age: timedelta) -> dict[str, str] | None:
        """What `seal` signed for `purpose`, or None when absent, tampered with, malformed or older than `max_age`."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        try:
            if not hmac.compare_digest(_unb64(signature), self._mac(body, _SEALED)):
                return None
            sealed = json.loads(_unb64(body))
        except ValueError:
            return None
        if (
            not isinstance(sealed, dict)
            or sealed.get("p") != purpose
            or not isinstance(sealed.get("t"), float)
        ):
            return None
        age = self._clock().timestamp() - sealed["t"]
        data = sealed.get("d")
        if not 0 <= age <= max_age.total_seconds() or not isinstance(data, dict):
            return None
        if not all(isinstance(value, str) for value in data.values()):
            return None
        return data

    def _mac(self, body: str, kind: bytes = b"") -> bytes:
        return hmac.new(self._key, kind + body.encode("ascii"), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not URL-safe base64") from exc
