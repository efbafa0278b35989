"""Opaque access tokens, explained by an authorization server's RFC 7662 introspection endpoint.

The agents' `/mcp` (broker/proxy/auth) and the approvers' API (broker/channels/sso) both ask
through `Introspection`; what a token means (an agent, an approver) is the caller's `explain`.

The broker authenticates as a confidential client (HTTP Basic) and posts the token. It accepts
an answer only when `active` is true, `iss` (when given) is the expected issuer, `aud` names the
expected audience (when given; always, with `require_audience`), `exp` (when given) is ahead
within `leeway`, and `explain` makes something of it. Anything else raises `IntrospectionRefused`
saying why, never naming the token.

An explained active answer is reused for at most `cache_seconds` and never past `exp`, so a
revoked token stops working within that time. Refusals are not remembered, so a caller cannot
grow the cache with made-up tokens, and the cache is emptied when it holds `cache_size` tokens.
An endpoint that is down or answers garbage refuses: an unverifiable token never gets through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import httpx

from broker.config.oauth import IntrospectionSettings
from broker.net.json_answers import json_object

TIMEOUT = 5.0

T = TypeVar("T")


class IntrospectionRefused(Exception):
    pass


class Introspection(Generic[T]):
    def __init__(
        self,
        endpoint: IntrospectionSettings,
        explain: Callable[[Mapping[str, Any]], T],
        *,
        issuer: str,
        audience: str,
        leeway: float,
        require_audience: bool = False,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`explain` turns an active answer into what the caller wants; it raises IntrospectionRefused
        for an answer it can make nothing of. `endpoint.endpoint` must be known by now."""
        if endpoint.endpoint is None:
            raise ValueError("the introspection endpoint must be discovered before it is asked")
        self._url = endpoint.endpoint
        self._endpoint = endpoint
        self._explain = explain
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._require_audience = require_audience
        self._clock = clock
        self._cache_size = cache_size
        self._transport = transport
        self._active: dict[bytes, tuple[T, float]] = {}
        self.requests = 0

    async def explained(self, token: bytes) -> T:
        """What an active token means; raises IntrospectionRefused otherwise."""
        remembered = self._active.get(token)
        now = self._clock()
        if remembered is not None:
            if now < remembered[1]:
                return remembered[0]
            del self._active[token]
        answer = await self._ask(token)
        self._check(answer, now)
        meaning = self._explain(answer)
        until: float = now + self._endpoint.cache_seconds
        expires = answer.get("exp")
        if isinstance(expires, int | float):
            # Compared, never converted: an int past float's range would raise OverflowError.
            until = min(until, expires)
        if len(self._active) >= self._cache_size:
            self._active.clear()
        self._active[token] = (meaning, until)
        return meaning

    async def _ask(self, token: bytes) -> Mapping[str, Any]:
        self.requests += 1
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT, transport=self._transport) as http:
                response = await http.post(
                    self._url,
                    data={"token": token.decode("latin-1"), "token_type_hint": "access_token"},
                    auth=(self._endpoint.client_id, self._endpoint.client_secret),
                    headers={"Accept": "application/json"},
                )
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise IntrospectionRefused(
                f"introspection endpoint unreachable ({type(error).__name__})"
            ) from error
        try:
            return json_object(response)
        except ValueError as error:
            raise IntrospectionRefused(f"introspection endpoint {error}") from error

    def _check(self, answer: Mapping[str, Any], now: float) -> None:
        if answer.get("active") is not True:
            raise IntrospectionRefused("the token is not active")
        issuer = answer.get("iss")
        if issuer is not None and issuer != self._issuer:
            raise IntrospectionRefused(f"introspection names issuer {issuer!r}")
        audience = answer.get("aud")
        if audience is None and self._require_audience:
            raise IntrospectionRefused(
                f"introspection names no audience; {self._audience!r} is required (aud)"
            )
        if audience is not None:
            audiences = audience if isinstance(audience, list) else [audience]
            if self._audience not in audiences:
                raise IntrospectionRefused("the token is not meant for this broker (aud)")
        expires = answer.get("exp")
        if isinstance(expires, int | float) and expires <= now - self._leeway:
            raise IntrospectionRefused("the token is expired")
