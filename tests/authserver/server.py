"""A real OAuth 2.1 / OpenID Connect authorization server for the test suite, built on authlib.

It serves, on a loopback port chosen by the kernel:

- discovery: RFC 8414 `/.well-known/oauth-authorization-server` and OpenID Connect
  `/.well-known/openid-configuration` (the same document), `/jwks` (RSA and EC keys);
- RFC 7591 dynamic client registration at `/register` (open, as MCP clients expect);
- `/authorize`: the authorization code flow with PKCE (S256 required). Consent is automatic: the
  user signed in is `login_as` (a test setting), or the `login_hint` / `user` query parameter;
  the answer is a 302 straight back to the client's redirect URI, so both the MCP SDK's redirect
  handler (following it with an HTTP client) and a headless browser go through unattended;
- `/token`: authorization_code, refresh_token, client_credentials and RFC 8693 token exchange.
  Access tokens are RFC 9068 JWTs whose `aud` is the RFC 8707 `resource` parameter (else the
  client id); `openid` in the scope adds an ID token with `sub`, `email` and `groups`;
- RFC 7662 introspection at `/introspect` (client authentication required), which also knows
  the opaque tokens `opaque_token()` hands out; RP-initiated logout at `/logout` (end_session.py).

Knobs for the bad cases the broker must refuse: `jwks_mode` ("ok", "down" = 503, "garbage" =
200 with a body that is not a key set, "empty"), `metadata_mode` likewise, `jwks_path` (where the
metadata says the keys are, `/jwks` or `/v2/jwks`; the other path answers 404),
`announces_introspection` (False: the metadata names no introspection endpoint), key rotation
(`rotate()`, `retire()`), and `mint()` / the `*_token()` helpers that sign whatever claims and
headers a test wants (expired, not yet valid, wrong issuer or audience, unknown key, signed by a
key that is not the one its `kid` names, HS256 keyed with the RSA public key, `alg: none`).
Counters (`jwks_hits`, `metadata_hits`, `introspection_hits`) let tests see the broker's caching.

The server runs in a thread with its own event loop, so sync and async tests, subprocesses and
browsers can all reach it; `AuthServer` is a context manager and `tests/authserver/fixture.py`
wraps it as the `auth_server` fixture.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

import uvicorn
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.authserver.end_session import EndSession
from tests.authserver.grants import (
    _AuthorizationCodeGrant,
    _ClientCredentialsGrant,
    _Introspection,
    _OpenIDCode,
    _RefreshTokenGrant,
    _Registration,
    _S256Required,
    _Server,
    _TokenExchangeGrant,
)
from tests.authserver.models import (
    ACCESS_TOKEN_TYPE,
    AUTH_METHODS,
    DEFAULT_USERS,
    SCOPES,
    TOKEN_EXCHANGE,
    AuthorizationCode,
    Client,
    FormRequest,
    JsonBodyRequest,
    Token,
    User,
)

__all__ = ["ACCESS_TOKEN_TYPE", "DEFAULT_USERS", "TOKEN_EXCHANGE", "AuthServer", "User"]


# -- the server -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class AuthServer:
    """The authorization server; see the module docstring. Use as `with AuthServer() as auth:`."""

    def __init__(self, *, users: Mapping[str, User] | None = None, token_lifetime: int = 3600) -> None:
        self.users = dict(users or DEFAULT_USERS)
        self.login_as = "alice"
        self.token_lifetime = token_lifetime
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Token] = {}
        self.jwks_mode = "ok"
        self.jwks_path = "/jwks"
        self.metadata_mode = "ok"
        self.announces_introspection = True
        self.jwks_hits = 0
        self.metadata_hits = 0
        self.introspection_hits = 0
        self.issued: list[dict[str, Any]] = []
        """Claims of every access token the token endpoint issued, oldest first."""
        self.authorizations: list[AuthorizationCode] = []  # every code /authorize granted, kept after use
        self.current_resource: str | None = None
        self.current_extra: dict[str, Any] = {}
        self.keys = KeySet([])
        self.signing_kid = self.add_key("RSA", kid="rsa-1")
        self.add_key("EC", kid="ec-1")
        self.signing_alg = "RS256"
        self.port = 0
        self.oauth = _Server(self)
        self.oauth.register_grant(_AuthorizationCodeGrant, [_S256Required(required=True), _OpenIDCode(self)])
        self.oauth.register_grant(_RefreshTokenGrant)
        self.oauth.register_grant(_ClientCredentialsGrant)
        self.oauth.register_grant(_TokenExchangeGrant)
        self.oauth.register_endpoint(_Registration(self))
        self.oauth.register_endpoint(_Introspection(self))
        self.end_session = EndSession(self)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None

    # -- keys -------------------------------------------------------------------------------------

    def add_key(self, kind: str = "RSA", *, kid: str | None = None) -> str:
        """Publishes a new key in the JWKS; returns its kid. It signs only after `use_key()`."""
        kid = kid or f"{kind.lower()}-{secrets.token_hex(4)}"
        params = {"kid": kid, "use": "sig"}
        key = RSAKey.generate_key(2048, params) if kind == "RSA" else ECKey.generate_key("P-256", params)
        self.keys.keys.append(key)
        return kid

    def use_key(self, kid: str) -> None:
        key = self.keys.get_by_kid(kid)
        self.signing_kid = kid
        self.signing_alg = "RS256" if key.key_type == "RSA" else "ES256"

    def rotate(self, kind: str = "RSA") -> str:
        """Key rotation: a new key is published and signs from now on; the old one stays published."""
        kid = self.add_key(kind)
        self.use_key(kid)
        return kid

    def retire(self, kid: str) -> None:
        self.keys.keys[:] = [key for key in self.keys.keys if key.kid != kid]

    def jwks(self) -> dict[str, Any]:
        return self.keys.as_dict(private=False)  # type: ignore[no-any-return]

    def public_pem(self, kid: str = "rsa-1") -> bytes:
        return self.keys.get_by_kid(kid).as_pem(private=False)  # type: ignore[no-any-return]

    # -- tokens -----------------------------------------------------------------------------------

    def claims(
        self,
        sub: str = "alice",
        *,
        aud: str | list[str] | None = None,
        scope: str = "tools:call",
        client_id: str = "test-client",
        lifetime: int = 300,
        **extra: Any,
    ) -> dict[str, Any]:
        """The claims the token endpoint would put in an access token for `sub` (overrides via extra)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud if aud is not None else client_id,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_hex(8),
        }
        user = self.users.get(sub)
        if user is not None:
            claims.update(email=user.email, groups=list(user.groups))
        claims.update(extra)
        return {key: value for key, value in claims.items() if value is not None}

    def mint(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        alg: str | None = None,
        key: Any = None,
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """Signs `claims` with the current key (or `kid` / an explicit `key`) as a JWT access token."""
        kid = kid or self.signing_kid
        signing_key = key if key is not None else self.keys.get_by_kid(kid)
        if alg is None:
            alg = "RS256" if signing_key.key_type == "RSA" else "ES256"
        full_header = {"alg": alg, "typ": "at+jwt", "kid": kid, **(header or {})}
        return jwt.encode(full_header, dict(claims), signing_key, algorithms=[alg])

    def token(self, sub: str = "alice", **claims: Any) -> str:
        """A valid access token for `sub`: `token("alice", aud=broker_resource, scope="tools:call")`."""
        return self.mint(self.claims(sub, **claims))

    def expired_token(self, sub: str = "alice", **claims: Any) -> str:
        now = int(time.time())
        return self.mint(self.claims(sub, **claims) | {"iat": now - 7200, "exp": now - 3600})

    def not_yet_valid_token(self, sub: str = "alice", **claims: Any) -> str:
        now = int(time.time())
        return self.mint(self.claims(sub, **claims) | {"nbf": now + 3600})

    def wrong_issuer_token(self, sub: str = "alice", **claims: Any) -> str:
        return self.mint(self.claims(sub, **claims) | {"iss": "https://evil.example"})

    def unknown_kid_token(self, sub: str = "alice", **claims: Any) -> str:
        """Signed by a key this server never published."""
        stranger = RSAKey.generate_key(2048, {"kid": "never-published"})
        return self.mint(self.claims(sub, **claims), kid="never-published", key=stranger)

    def wrongly_signed_token(self, sub: str = "alice", **claims: Any) -> str:
        """Names a published kid but is signed by another key."""
        stranger = RSAKey.generate_key(2048, {"kid": self.signing_kid})
        return self.mint(self.claims(sub, **claims), kid=self.signing_kid, key=stranger)

    def hs256_confused_token(self, sub: str = "alice", **claims: Any) -> str:
        """HS256 keyed with the RSA public key's PEM: the classic algorithm confusion attack.
        Written by hand because a JOSE library (rightly) refuses to use a PEM as an HMAC secret."""
        header = {"alg": "HS256", "typ": "at+jwt", "kid": self.signing_kid}
        signing_input = (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(sub, **claims)).encode())}"
        )
        mac = hmac.new(self.public_pem(self.signing_kid), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    def alg_none_token(self, sub: str = "alice", **claims: Any) -> str:
        header = {"alg": "none", "typ": "at+jwt"}
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(sub, **claims)).encode())}."

    def opaque_token(
        self,
        sub: str = "alice",
        *,
        aud: str | None = None,
        scope: str = "tools:call",
        client_id: str = "test-client",
    ) -> str:
        """A random token only introspection can explain; for a known user the answer carries
        `email` and `groups`, as a JWT from `token()` does."""
        value = secrets.token_urlsafe(32)
        known = self.users.get(sub)
        user = known or User(sub, "")
        profile = {"email": known.email, "groups": list(known.groups)} if known is not None else {}
        self.tokens[value] = Token(
            value, None, client_id, scope, user, aud, int(time.time()), self.token_lifetime, claims=profile
        )
        return value

    def revoke(self, token: str) -> None:
        if token in self.tokens:
            self.tokens[token].revoked = True

    def register_client(
        self,
        *,
        grant_types: Iterable[str] = ("client_credentials", TOKEN_EXCHANGE),
        redirect_uris: Iterable[str] = (),
        scope: str = " ".join(SCOPES),
        client_id: str | None = None,
    ) -> tuple[str, str]:
        """A confidential client registered out of band; returns (client_id, client_secret)."""
        client = Client(
            client_id or f"client-{secrets.token_hex(4)}",
            secrets.token_urlsafe(24),
            {
                "grant_types": list(grant_types),
                "redirect_uris": list(redirect_uris),
                "response_types": ["code"],
                "scope": scope,
                "token_endpoint_auth_method": "client_secret_basic",
            },
        )
        self.clients[client.client_id] = client
        assert client.client_secret is not None
        return client.client_id, client.client_secret

    # -- called by authlib --------------------------------------------------------------------------

    def issue(
        self, grant_type: str, client: Client, user: User | None, scope: str, include_refresh_token: bool
    ) -> dict[str, Any]:
        sub = user.sub if user is not None else client.client_id
        claims = self.claims(
            sub,
            aud=self.current_resource or client.client_id,
            scope=scope,
            client_id=client.client_id,
            lifetime=self.token_lifetime,
            **self.current_extra,
        )
        if user is None:
            claims.pop("email", None)
            claims.pop("groups", None)
        self.issued.append(claims)
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": self.mint(claims),
            "expires_in": self.token_lifetime,
            "scope": scope,
        }
        if include_refresh_token and grant_type in ("authorization_code", "refresh_token"):
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def remember(self, token: dict[str, Any], request: OAuth2Request) -> None:
        claims = self.issued[-1] if self.issued else {}
        stored = Token(
            token["access_token"],
            token.get("refresh_token"),
            request.client.client_id,
            token.get("scope", ""),
            request.user,
            self.current_resource,
            int(time.time()),
            int(token.get("expires_in", self.token_lifetime)),
            claims=dict(claims),
        )
        self.tokens[stored.access_token] = stored
        if stored.refresh_token:
            self.refresh_tokens[stored.refresh_token] = stored

    # -- HTTP ---------------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.issuer

    def metadata(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "registration_endpoint": f"{base}/register",
            **({"introspection_endpoint": f"{base}/introspect"} if self.announces_introspection else {}),
            "jwks_uri": f"{base}{self.jwks_path}",
            "userinfo_endpoint": f"{base}/userinfo",
            "scopes_supported": SCOPES,
            "response_types_supported": ["code"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                TOKEN_EXCHANGE,
            ],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "claims_supported": ["sub", "email", "groups"],
            **self.end_session.metadata(),
        }

    async def _oauth_request(self, request: Request) -> FormRequest:
        pairs = list(request.query_params.multi_items())
        if request.method == "POST":
            form = await request.form()
            pairs += [(key, str(value)) for key, value in form.multi_items()]
        return FormRequest(request.method, str(request.url), request.headers, pairs)

    async def _metadata(self, request: Request) -> Response:
        self.metadata_hits += 1
        if self.metadata_mode == "down":
            return Response("unavailable", status_code=503)
        if self.metadata_mode == "garbage":
            return Response("<html>not metadata</html>", media_type="application/json")
        return JSONResponse(self.metadata())

    async def _jwks(self, request: Request) -> Response:
        self.jwks_hits += 1
        if request.url.path != self.jwks_path:
            return Response("no keys here", status_code=404)
        if self.jwks_mode == "down":
            return Response("unavailable", status_code=503)
        if self.jwks_mode == "garbage":
            return Response('{"keys": "not a list', media_type="application/json")
        if self.jwks_mode == "empty":
            return JSONResponse({"keys": []})
        return JSONResponse(self.jwks())

    async def _authorize(self, request: Request) -> Response:
        oauth_request = await self._oauth_request(request)
        name = oauth_request.payload.data.get("user") or oauth_request.payload.data.get("login_hint")
        user = self.users.get(name or self.login_as)
        with self._lock:
            try:
                grant = self.oauth.get_consent_grant(request=oauth_request, end_user=user)
            except OAuth2Error as error:
                return JSONResponse(dict(error.get_body()), status_code=error.status_code)
            if user is None:
                return JSONResponse({"error": "access_denied", "error_description": "no such user"}, 400)
            return self.oauth.create_authorization_response(
                request=oauth_request, grant_user=user, grant=grant
            )  # type: ignore[no-any-return]

    async def _token(self, request: Request) -> Response:
        oauth_request = await self._oauth_request(request)
        with self._lock:
            self.current_resource = oauth_request.payload.data.get("resource")
            self.current_extra = {}
            try:
                return self.oauth.create_token_response(oauth_request)  # type: ignore[no-any-return]
            finally:
                self.current_resource = None
                self.current_extra = {}

    async def _register(self, request: Request) -> Response:
        try:
            data = await request.json()
        except ValueError:
            data = None
        json_request = JsonBodyRequest(request.method, str(request.url), request.headers, data)
        with self._lock:
            return self.oauth.create_endpoint_response("client_registration", json_request)  # type: ignore[no-any-return]

    async def _introspect(self, request: Request) -> Response:
        oauth_request = await self._oauth_request(request)
        with self._lock:
            return self.oauth.create_endpoint_response("introspection", oauth_request)  # type: ignore[no-any-return]

    async def _userinfo(self, request: Request) -> Response:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = self.tokens.get(value) if scheme.lower() == "bearer" else None
        if token is None or token.user is None or token.is_expired():
            return JSONResponse({"error": "invalid_token"}, 401, headers={"WWW-Authenticate": "Bearer"})
        user = token.user
        return JSONResponse({"sub": user.sub, "email": user.email, "groups": list(user.groups)})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/oauth-authorization-server", self._metadata),
                Route("/.well-known/openid-configuration", self._metadata),
                Route("/jwks", self._jwks),
                Route("/v2/jwks", self._jwks),
                Route("/authorize", self._authorize, methods=["GET", "POST"]),
                Route("/token", self._token, methods=["POST"]),
                Route("/register", self._register, methods=["POST"]),
                Route("/introspect", self._introspect, methods=["POST"]),
                Route("/userinfo", self._userinfo, methods=["GET", "POST"]),
                Route("/logout", self.end_session.endpoint),
            ]
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> AuthServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), lifespan="off", log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            assert self._server is not None
            loop.call_soon(started.set)
            loop.run_until_complete(self._server.serve(sockets=[sock]))
            loop.close()

        self._thread = threading.Thread(target=run, name="auth-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("auth server did not start")
        return self

    def stop(self) -> None:
        """Stops serving (connections are refused); `start()` again comes back on the same port."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> AuthServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def authorize_url(self, **params: str) -> str:
        return f"{self.issuer}/authorize?{urlencode(params)}"
