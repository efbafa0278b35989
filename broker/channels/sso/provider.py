"""The approvers' identity provider, as a client sees it: discovery, signing keys, token checks.

Discovery (``<issuer>/.well-known/openid-configuration``) is fetched on first use and read again
once it is older than `metadata_max_age` (an hour), so a provider that moves an endpoint or its
keys, or starts announcing ``end_session_endpoint``, is followed without a restart; its
``issuer`` must be the configured one, character for character; after a failed attempt the next
waits `refresh_interval`, and while a refresh fails the document already held keeps serving (with
none held, nothing signs in). The signing keys are the agents' JWKS cache
(broker.net.jwks.JwksCache) over the discovered ``jwks_uri``: fetched again for a key id
it does not hold or when older than an hour, at most once per `refresh_interval`, so a stream of
tokens with invented key ids cannot turn the broker into a load generator against the provider;
while the provider cannot be reached, the keys already held keep working, and with none held
(or none fresh) nothing verifies.

A token is checked with joserfc: its header's ``alg`` must be in the configured asymmetric
allow-list (never ``none``, never HMAC), the key must come from the provider's JWKS, and ``iss``,
``aud``, ``exp``, ``nbf`` and ``iat`` are checked with the configured leeway. ID tokens also
carry the ``nonce`` of the sign-in they answer, and an ID token with several audiences must name
this client in ``azp``.

Exception tree::

    SsoError
    ├── ProviderUnavailable   discovery, JWKS or token endpoint down or answering garbage (fail closed)
    └── TokenRejected         the token is not one this broker accepts; the message says why
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from joserfc import jws, jwt
from joserfc.errors import JoseError

from broker.approvals.clock import Clock, utc_now
from broker.config.sso import SsoSettings
from broker.net.jwks import JwksCache

logger = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 256 * 1024
HTTP_TIMEOUT = 10.0


class SsoError(Exception):
    pass


class ProviderUnavailable(SsoError):
    pass


class TokenRejected(SsoError):
    pass


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None
    introspection_endpoint: str | None = None
    """None when absent or not an http(s) URL: then only a configured endpoint introspects."""


class IdentityProvider:
    def __init__(
        self,
        settings: SsoSettings,
        *,
        clock: Clock = utc_now,
        refresh_interval: timedelta = timedelta(seconds=30),
        metadata_max_age: timedelta = timedelta(hours=1),
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._metadata_max_age = metadata_max_age
        self._metadata: ProviderMetadata | None = None
        self._metadata_at: datetime | None = None
        self._metadata_failed_at: datetime | None = None
        self._jwks: JwksCache | None = None
        self._jwks_uri: str | None = None

    # -- documents ------------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        held, now = self._metadata, self._clock()
        if (
            held is not None
            and self._metadata_at is not None
            and now - self._metadata_at < self._metadata_max_age
        ):
            return held
        failed_at = self._metadata_failed_at
        if failed_at is not None and now - failed_at < self._refresh_interval:
            if held is not None:
                return held
            raise ProviderUnavailable("the identity provider's discovery document failed moments ago")
        try:
            fresh = await self._discover()
        except ProviderUnavailable as error:
            self._metadata_failed_at = now
            if held is None:
                raise
            logger.warning("sso: cannot refresh the discovery document (%s); keeping the one held", error)
            return held
        self._metadata, self._metadata_at, self._metadata_failed_at = fresh, now, None
        return fresh

    async def _discover(self) -> ProviderMetadata:
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if document.get("issuer") != self.settings.issuer:
            raise ProviderUnavailable(
                f"the discovery document at {url} names issuer {document.get('issuer')!r}, "
                f"not the configured {self.settings.issuer!r}"
            )
        try:
            return ProviderMetadata(
                issuer=document["issuer"],
                authorization_endpoint=_url(document, "authorization_endpoint"),
                token_endpoint=_url(document, "token_endpoint"),
                jwks_uri=_url(document, "jwks_uri"),
                end_session_endpoint=document.get("end_session_endpoint")
                if isinstance(document.get("end_session_endpoint"), str)
                else None,
                introspection_endpoint=_optional_url(document, "introspection_endpoint"),
            )
        except (KeyError, TypeError) as exc:
            raise ProviderUnavailable(f"the discovery document at {url} lacks {exc}") from None

    async def _keys(self) -> JwksCache:
        metadata = await self.metadata()
        if self._jwks is None or self._jwks_uri != metadata.jwks_uri:
            # A new jwks_uri is a new key set: keys held from the old place are not carried over.
            self._jwks_uri = metadata.jwks_uri
            self._jwks = JwksCache(
                metadata.issuer,
                jwks_uri=metadata.jwks_uri,
                min_refresh=self._refresh_interval.total_seconds(),
                monotonic=lambda: self._clock().timestamp(),
            )
        return self._jwks

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
                response = await http.get(url)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"cannot reach {url}: {exc!r}") from None
        if response.status_code != 200:
            raise ProviderUnavailable(f"{url} answered {response.status_code}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise ProviderUnavailable(f"{url} answered a document over {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = response.json()
        except ValueError:
            raise ProviderUnavailable(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise ProviderUnavailable(f"{url} did not answer a JSON object")
        return document

    # -- the code flow ----------------------------------------------------------------------------

    def _oauth_client(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(  # type: ignore[no-untyped-call]
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret,
            scope=" ".join(self.settings.scopes),
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if self.settings.client_secret else "none",
            timeout=HTTP_TIMEOUT,
        )

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        """Where to send the browser: the provider's login, asking for a code bound to this PKCE verifier."""
        metadata = await self.metadata()
        async with self._oauth_client(redirect_uri) as client:
            url, _ = client.create_authorization_url(  # type: ignore[no-untyped-call]
                metadata.authorization_endpoint, state=state, nonce=nonce, code_verifier=code_verifier
            )
        return str(url)

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
        metadata = await self.metadata()
        try:
            async with self._oauth_client(redirect_uri) as client:
                token = await client.fetch_token(  # type: ignore[no-untyped-call]
                    metadata.token_endpoint, code=code, code_verifier=code_verifier, redirect_uri=redirect_uri
                )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"cannot reach the token endpoint: {exc!r}") from None
        except (OAuthError, TypeError, ValueError) as exc:  # an error body, or a body that is no token
            raise TokenRejected(f"the provider refused the code: {exc}") from None
        return dict(token)

    async def end_session_url(
        self, *, id_token_hint: str | None, post_logout_redirect_uri: str
    ) -> str | None:
        """Where to send the browser to sign out at the provider too (OpenID Connect RP-Initiated
        Logout 1.0), or None when the provider announces no ``end_session_endpoint``. ``client_id``
        rides along so a provider can check the redirect without the hint (it may be missing)."""
        endpoint = (await self.metadata()).end_session_endpoint
        if endpoint is None:
            return None
        query = {"post_logout_redirect_uri": post_logout_redirect_uri, "client_id": self.settings.client_id}
        if id_token_hint is not None:
            query = {"id_token_hint": id_token_hint, **query}
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    # -- tokens ----------------------------------------------------------------------------------

    async def verify_id_token(self, token: str, *, nonce: str) -> dict[str, Any]:
        claims = await self._verify(token, audience=self.settings.client_id)
        if claims.get("nonce") != nonce:
            raise TokenRejected("the ID token's nonce is not the one this sign-in sent")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.settings.client_id:
            raise TokenRejected("the ID token has several audiences and azp is not this client")
        return claims

    async def verify_access_token(self, token: str) -> dict[str, Any]:
        if self.settings.api_audience is None:
            raise TokenRejected("this broker takes no identity provider access tokens (web.sso.api_audience)")
        return await self._verify(token, audience=self.settings.api_audience)

    async def _verify(self, token: str, *, audience: str) -> dict[str, Any]:
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, UnicodeError):
            raise TokenRejected("not a well-formed signed JWT") from None
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise TokenRejected(
                f"signing algorithm {alg!r} is not allowed ({', '.join(self.settings.algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("the token's kid is not a string")
        keys = await self._keys()
        key = keys.key(kid)
        if key is None or not keys.fresh:
            await keys.refresh()
            key = keys.key(kid)
        if key is None:
            if not keys.fresh:
                raise ProviderUnavailable("the identity provider's signing keys cannot be fetched")
            raise TokenRejected(f"no key {kid!r} in the identity provider's JWKS")
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
            registry = jwt.JWTClaimsRegistry(
                now=lambda: int(self._clock().timestamp()),
                leeway=self.settings.leeway_seconds,
                iss={"essential": True, "value": self.settings.issuer},
                aud={"essential": True, "value": audience},
                exp={"essential": True},
                sub={"essential": True},
            )
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise TokenRejected(f"{exc.error}: {exc.description}" if exc.description else exc.error) from None
        except ValueError as exc:
            raise TokenRejected(f"the token is malformed: {exc}") from None
        return dict(decoded.claims)


def _url(document: dict[str, Any], name: str) -> str:
    value = document[name]
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise TypeError(f"a URL in {name}")
    return value


def _optional_url(document: dict[str, Any], name: str) -> str | None:
    # Not a reason to refuse discovery: sign-in does not need it.
    try:
        return _url(document, name)
    except (KeyError, TypeError):
        return None
