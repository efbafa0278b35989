"""A local OAuth 2.0 authorization server for the upstream-credentials tests.

It serves RFC 8414 metadata, the client-credentials grant (client_secret_basic), RFC 8693 token
exchange and RFC 7662 introspection, over real HTTP, and records what it was asked, so a test can check the form
the broker sent and how many tokens it fetched. It can be told to go down (HTTP 503).
"""

from __future__ import annotations

import base64
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from tests.upstream.support import DemoHttpServer


@dataclass
class TokenServer:
    clients: dict[str, str]
    """client_id -> secret; the upstream introspects as one of these too."""
    lifetime: int = 3600
    down: bool = False
    garbage: bool = False
    """Answer token requests with HTTP 200 and a body that is not a token."""
    ssl_context: ssl.SSLContext | None = None
    """Serve https with this context (a certificate, and a client CA when it wants client certificates)."""
    issued: dict[str, float] = field(default_factory=dict)
    """Token -> expiry (time.time())."""
    subjects: dict[str, str] = field(default_factory=dict)
    """Token -> whom it was issued for (the client, or the subject of an exchanged token)."""
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"{'http' if self.ssl_context is None else 'https'}://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.origin}/tenant"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/tenant/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.origin}/tenant/introspect"

    def revoke_all(self) -> None:
        self.issued.clear()

    def mint(self, subject: str) -> str:
        """A token for `subject`, as if it had signed in (the agent's own token)."""
        token = secrets.token_urlsafe(16)
        self.issued[token] = time.time() + self.lifetime
        self.subjects[token] = subject
        return token

    def _active(self, token: str) -> bool:
        expiry = self.issued.get(token)
        return expiry is not None and expiry > time.time()

    def _client(self, request: web.Request) -> str | None:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        return client_id if self.clients.get(client_id) == secret else None

    async def _metadata(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "token_endpoint": self.token_url,
                "introspection_endpoint": self.introspection_url,
                "grant_types_supported": ["client_credentials"],
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="maintenance")
        if self.garbage:
            return web.Response(status=200, text="<html>sign in</html>", content_type="text/html")
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.requests.append(form)
        client = self._client(request)
        if client is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "client_credentials":
            subject = client
        elif form.get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange":
            subject_token = form.get("subject_token", "")
            if not self._active(subject_token):
                return web.json_response({"error": "invalid_grant"}, status=400)
            subject = self.subjects[subject_token]
        else:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = self.mint(subject)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime})

    async def _introspect(self, request: web.Request) -> web.Response:
        if self._client(request) is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str((await request.post()).get("token", ""))
        if not self._active(token):
            return web.json_response({"active": False})
        return web.json_response({"active": True, "sub": self.subjects[token]})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TokenServer]:
        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server/tenant", self._metadata)
        app.router.add_post("/tenant/token", self._token)
        app.router.add_post("/tenant/introspect", self._introspect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = runner.addresses[0][1]
        try:
            yield self
        finally:
            await runner.cleanup()


def guarded_demo_server(
    token_server: TokenServer, client: tuple[str, str], *, mode: str = "http"
) -> DemoHttpServer:
    """The demo server (in `mode`: http or sse) refusing requests whose bearer token `token_server`
    does not call active; it introspects as `client` (id, secret)."""
    return guarded_demo_server_for(token_server.introspection_url, client, mode=mode)


def guarded_demo_server_for(
    introspection_url: str, client: tuple[str, str], *, mode: str = "http"
) -> DemoHttpServer:
    return DemoHttpServer(
        mode,
        env={
            "DEMO_INTROSPECT_URL": introspection_url,
            "DEMO_INTROSPECT_CLIENT": client[0],
            "DEMO_INTROSPECT_SECRET": client[1],
        },
    )
