"""The authorization server's signing keys: discovered, cached, refreshed at a bounded rate.

- Discovery: `jwks_uri` from the issuer's RFC 8414 metadata
  (`/.well-known/oauth-authorization-server` inserted before the issuer's path), else from its
  OpenID Connect metadata (`/.well-known/openid-configuration` appended); the document's `issuer`
  must equal the configured one. A configured `jwks_uri` skips discovery. Discovery runs again
  with every key fetch (so as rarely as those), so a provider that moves its keys is followed
  without a restart; while its metadata is unreachable the last `jwks_uri` found serves.
- Cache: the key set is kept for `max_age` seconds; validating with a cached key does no I/O.
- Unknown `kid` (the provider rotated): one refetch, shared by all waiting requests, and at most
  one every `min_refresh` seconds however many tokens with strange kids arrive, so forged tokens
  cannot turn the broker into a load generator against the provider.
- Provider unreachable or answering garbage: the last good key set keeps serving (stale) and
  the failure is logged; with no key set at all every token is refused (fail closed).
- Symmetric (`oct`) keys in a JWKS are dropped: a token can only be checked against a public key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.net.json_answers import json_object

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 5.0


class KeysUnavailable(Exception):
    """No key set could be had from the provider."""


def metadata_urls(issuer: str) -> list[str]:
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]


class JwksCache:
    def __init__(
        self,
        issuer: str,
        *,
        jwks_uri: str | None = None,
        max_age: float = 3600.0,
        min_refresh: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._issuer = issuer
        self._configured_jwks_uri = jwks_uri
        self._discovered_jwks_uri: str | None = None
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._monotonic = monotonic
        self._transport = transport
        self._keys: dict[str, Any] = {}
        self._anonymous: list[Any] = []
        """Published keys without a kid, tried when a token names none."""
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def key(self, kid: str | None) -> Any | None:
        """The cached public key for `kid`; None when unknown (no I/O)."""
        if kid is None:
            return self._anonymous[0] if len(self._anonymous) == 1 else None
        return self._keys.get(kid)

    @property
    def fresh(self) -> bool:
        return self._fetched_at is not None and self._monotonic() - self._fetched_at < self._max_age

    async def refresh(self) -> None:
        """Refetches unless one was attempted less than `min_refresh` seconds ago; concurrent
        callers share one fetch. Failures keep the previous key set."""
        started = self._attempted_at
        async with self._lock:
            if self._attempted_at != started:
                return  # another request refetched while this one waited
            now = self._monotonic()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh:
                return
            self._attempted_at = now
            try:
                keys = await self._fetch()
            except KeysUnavailable as error:
                logger.warning("oauth: cannot refresh the signing keys of %s: %s", self._issuer, error)
                return
            self._keys = {key.kid: key for key in keys if key.kid is not None}
            self._anonymous = [key for key in keys if key.kid is None]
            self._fetched_at = self._monotonic()

    async def _fetch(self) -> list[Any]:
        self.fetches += 1
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, transport=self._transport) as http:
            jwks_uri = self._configured_jwks_uri or await self._jwks_uri_now(http)
            document = await _get_json(http, jwks_uri)
        try:
            keyset = KeySet.import_key_set(document)  # type: ignore[arg-type]  # checked by joserfc
        except (JoseError, ValueError, TypeError, KeyError) as error:
            raise KeysUnavailable(f"{jwks_uri} is not a JWK set ({error})") from error
        keys = [key for key in keyset.keys if key.key_type != "oct"]
        if not keys:
            raise KeysUnavailable(f"{jwks_uri} holds no public keys")
        return keys

    async def _jwks_uri_now(self, http: httpx.AsyncClient) -> str:
        try:
            self._discovered_jwks_uri = await self._discover(http)
        except KeysUnavailable as error:
            if self._discovered_jwks_uri is None:
                raise
            logger.warning(
                "oauth: discovery for %s failed (%s); fetching keys from the last jwks_uri found, %s",
                self._issuer,
                error,
                self._discovered_jwks_uri,
            )
        return self._discovered_jwks_uri

    async def _discover(self, http: httpx.AsyncClient) -> str:
        problems = []
        for url in metadata_urls(self._issuer):
            try:
                document = await _get_json(http, url)
            except KeysUnavailable as error:
                problems.append(str(error))
                continue
            if document.get("issuer") != self._issuer:
                problems.append(f"{url} names issuer {document.get('issuer')!r}")
                continue
            jwks_uri = document.get("jwks_uri")
            if isinstance(jwks_uri, str) and jwks_uri.startswith(("https://", "http://")):
                return jwks_uri
            problems.append(f"{url} has no jwks_uri")
        raise KeysUnavailable("; ".join(problems))


async def _get_json(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        answer = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as error:
        raise KeysUnavailable(f"{url}: {type(error).__name__}: {error}") from error
    try:
        return json_object(answer)
    except ValueError as error:
        raise KeysUnavailable(f"{url} {error}") from error
