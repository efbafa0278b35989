"""The OAuth 2.0 client-credentials grant (RFC 6749 §4.4): the broker's own token for an upstream.

Per server::

    "auth": {"type": "client_credentials",
             "issuer": "https://login.example.com/tenant",   # token endpoint found via RFC 8414 / OIDC
             "token_url": "https://login.example.com/token", # or given directly (wins over issuer)
             "client_id": "broker", "client_secret": "${UPSTREAM_SECRET}",
             "scope": "tools.read tools.call", "resource": "https://docs.internal/mcp",
             "audience": "docs-api"}                         # optional, for providers that want it

The client authenticates with HTTP Basic (``client_secret_basic``, the RFC's default). The token
is fetched on the first call and kept until shortly before it expires; once `REFRESH_FRACTION` of
its life has passed, the next call starts a refresh in the background and is sent with the
current token, so calls wait for the token endpoint only when no valid token exists at all. An
upstream answering 401 makes the broker drop the token it used (`reject`) and fetch a new one.

The token endpoint (and the metadata) is reached through the upstream's own network settings
(`broker.proxy.upstream.credentials.network`): its ``ca_bundle`` and client certificate, and its
``proxy`` when one is configured; otherwise httpx applies ``HTTPS_PROXY``/``NO_PROXY`` to the
token endpoint's host and verifies against ``SSL_CERT_FILE`` or its default CAs. Any failure
(unreachable, a TLS handshake refused, an error answer, a body that is not a token) is a
`CredentialError` naming the endpoint, and the call is not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx

from broker.proxy.upstream.credentials.errors import CredentialError
from broker.proxy.upstream.credentials.network import UpstreamNetwork
from broker.proxy.upstream.http_client import connect_problem

logger = logging.getLogger(__name__)

REFRESH_FRACTION: Final = 0.75
EXPIRY_SKEW_SECONDS: Final = 5.0
DEFAULT_LIFETIME_SECONDS: Final = 300.0
"""Assumed when the token endpoint does not say (``expires_in`` is only recommended)."""
REQUEST_TIMEOUT_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class ClientCredentialsSettings:
    client_id: str
    client_secret: str
    token_url: str | None
    issuer: str | None
    scope: str | None = None
    resource: str | None = None
    audience: str | None = None


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    refresh_at: float
    expires_at: float


class ClientCredentialsSource:
    """Bearer tokens for one upstream, fetched ahead of need."""

    def __init__(
        self,
        settings: ClientCredentialsSettings,
        *,
        server: str,
        clock: Callable[[], float] = time.monotonic,
        network: UpstreamNetwork | None = None,
    ) -> None:
        self._settings = settings
        self._server = server
        self._clock = clock
        self._http = token_endpoint_client(network)
        self._token: Token | None = None
        self._token_url = settings.token_url
        self._fetching: asyncio.Lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None
        self.fetches = 0
        """Tokens fetched so far (tests and metrics)."""

    async def bearer(self) -> str:
        token = self._token
        now = self._clock()
        if token is not None and now < token.expires_at:
            if now >= token.refresh_at and self._refresh is None:
                self._refresh = asyncio.get_running_loop().create_task(self._refresh_quietly(token))
            return token.value
        async with self._fetching:
            token = self._token
            if token is None or self._clock() >= token.expires_at:
                token = await self._fetch()
            return token.value

    def reject(self, value: str) -> None:
        """The upstream refused `value` (HTTP 401): the next call fetches a new token."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def wait_refreshed(self) -> None:
        """Returns once no background refresh is running."""
        refresh = self._refresh
        if refresh is not None:
            await asyncio.shield(refresh)

    async def aclose(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        await self._http.aclose()

    async def _refresh_quietly(self, stale: Token) -> None:
        try:
            async with self._fetching:
                if self._token is stale:
                    await self._fetch()
        except CredentialError as exc:
            # The current token stays in use until it expires; the next call retries the refresh.
            logger.warning("upstream '%s': refreshing its token failed: %s", self._server, exc)
        finally:
            self._refresh = None

    async def _fetch(self) -> Token:
        token = await self.request_token({"grant_type": "client_credentials"})
        self._token = token
        self.fetches += 1
        return token

    async def request_token(self, grant: dict[str, str]) -> Token:
        """Asks the token endpoint for a bearer token with the `grant` form (plus scope, resource and
        audience), authenticated as this client; also used for token exchange."""
        url = self._token_url or await self._discover()
        form = dict(grant)
        for key in ("scope", "resource", "audience"):
            value = getattr(self._settings, key)
            if value:
                form[key] = value
        started = self._clock()
        try:
            response = await self._http.post(
                url, data=form, auth=(self._settings.client_id, self._settings.client_secret)
            )
        except httpx.HTTPError as exc:
            raise CredentialError(
                f"token endpoint {url} cannot be reached: {_unreachable(url, exc)}"
            ) from exc
        body = _json_object(response) or {}
        if response.status_code != 200:
            error = body.get("error")
            described = (
                f"{error}: {body.get('error_description', '')}".rstrip(": ") if error else response.text[:200]
            )
            raise CredentialError(f"token endpoint {url} answered HTTP {response.status_code}: {described}")
        value, kind = body.get("access_token"), body.get("token_type")
        if not isinstance(value, str) or not value or not isinstance(kind, str) or kind.lower() != "bearer":
            raise CredentialError(f"token endpoint {url} did not answer with a bearer access token")
        lifetime = body.get("expires_in", DEFAULT_LIFETIME_SECONDS)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME_SECONDS
        return Token(
            value=value,
            refresh_at=started + lifetime * REFRESH_FRACTION,
            expires_at=started + max(lifetime - EXPIRY_SKEW_SECONDS, lifetime / 2),
        )

    async def _discover(self) -> str:
        issuer = self._settings.issuer
        assert issuer is not None, "settings have a token_url or an issuer"
        for url in metadata_urls(issuer):
            try:
                response = await self._http.get(url)
            except httpx.HTTPError as exc:
                raise CredentialError(
                    f"metadata at {url} cannot be reached: {_unreachable(url, exc)}"
                ) from exc
            metadata = _json_object(response) if response.status_code == 200 else None
            if metadata is None:
                continue
            if metadata.get("issuer") != issuer:
                raise CredentialError(
                    f"metadata at {url} names issuer {metadata.get('issuer')!r}, not {issuer!r}"
                )
            endpoint = metadata.get("token_endpoint")
            if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("https", "http"):
                raise CredentialError(f"metadata at {url} has no usable token_endpoint")
            self._token_url = endpoint
            return endpoint
        raise CredentialError(f"no authorization server metadata found for issuer {issuer}")


def token_endpoint_client(network: UpstreamNetwork | None) -> httpx.AsyncClient:
    """An HTTP client that reaches the authorization server the way the upstream is reached."""
    verify: ssl.SSLContext | bool = True
    if network is not None and network.ssl_context is not None:
        verify = network.ssl_context
    if network is None or not network.proxy_configured:
        return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, verify=verify, trust_env=True)
    route = network.proxy
    if route is None:
        # "none": no environment proxy either. trust_env=False would also drop SSL_CERT_FILE, so
        # the context is made here while the environment still counts.
        if verify is True:
            verify = httpx.create_ssl_context(trust_env=True)
        return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, verify=verify, trust_env=False)
    headers = None if route.authorization is None else {"Proxy-Authorization": route.authorization}
    return httpx.AsyncClient(
        timeout=REQUEST_TIMEOUT_SECONDS,
        verify=verify,
        proxy=httpx.Proxy(route.url, headers=headers),
        trust_env=True,
    )


def metadata_urls(issuer: str) -> list[str]:
    """RFC 8414 §3.1 inserts the well-known segment before the issuer's path; OpenID Connect appends it."""
    parts = urlsplit(issuer)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    candidates = [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]
    return list(dict.fromkeys(candidates))


def _unreachable(url: str, exc: httpx.HTTPError) -> str:
    """What went wrong, from the cause that says it: httpx wraps TLS failures and resets in errors
    whose own message is often empty."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        if isinstance(cause, ssl.SSLError):
            return connect_problem(cause)
    if url.startswith("https:") and any(isinstance(cause, ConnectionResetError) for cause in chain):
        # TLS 1.3 servers refuse a missing client certificate after the handshake, by closing.
        return "the server closed the connection (a server that requires a client certificate does so when none is presented)"
    return next((str(cause) for cause in chain if str(cause)), type(exc).__name__)


def _json_object(response: httpx.Response) -> dict[str, object] | None:
    try:
        decoded = response.json()
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None
