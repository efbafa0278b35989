"""Opaque access tokens, explained by the authorization server's RFC 7662 introspection endpoint.

The broker authenticates as a confidential client (HTTP Basic) and posts the token. It accepts the
answer only when `active` is true, `iss` (when given) is the configured issuer, `aud` (when given)
names the broker's resource, and `exp` (when given) is ahead. The agent name and scopes come from
the answer as from a JWT's claims (see jwt.py).

An active answer is reused for at most `cache_seconds` (and never past `exp`), so a revoked token
stops working within that time. Inactive answers are not remembered: a caller cannot grow the
cache with made-up tokens. An endpoint that is down or answers garbage refuses the call (401, one
log line): an unverifiable token never gets through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from broker.config.oauth import IntrospectionSettings, OAuthSettings
from broker.net.json_answers import json_object
from broker.proxy.auth.jwt import TokenRefused, agent_of, scopes_of
from broker.proxy.auth.model import AgentIdentity

logger = logging.getLogger(__name__)

TIMEOUT = 5.0


class Introspector:
    def __init__(
        self,
        settings: OAuthSettings,
        endpoint: IntrospectionSettings,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._endpoint = endpoint
        self._clock = clock
        self._cache_size = cache_size
        self._transport = transport
        self._active: dict[bytes, tuple[AgentIdentity, float]] = {}
        self.requests = 0

    async def identify(self, token: bytes) -> AgentIdentity:
        """The agent an active token names; raises TokenRefused otherwise."""
        remembered = self._active.get(token)
        now = self._clock()
        if remembered is not None:
            if now < remembered[1]:
                return remembered[0]
            del self._active[token]
        answer = await self._ask(token)
        self._check(answer, now)
        agent = agent_of(answer, self._settings.agent_claim)
        if agent is None:
            raise TokenRefused(f"introspection names no {self._settings.agent_claim!r} for the agent")
        identity = AgentIdentity(agent, "introspection", scopes_of(answer), dict(answer))
        until = now + self._endpoint.cache_seconds
        if isinstance(answer.get("exp"), int | float):
            until = min(until, float(answer["exp"]))
        if len(self._active) >= self._cache_size:
            self._active.clear()
        self._active[token] = (identity, until)
        return identity

    async def _ask(self, token: bytes) -> Mapping[str, Any]:
        self.requests += 1
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT, transport=self._transport) as http:
                response = await http.post(
                    self._endpoint.endpoint,
                    data={"token": token.decode("latin-1"), "token_type_hint": "access_token"},
                    auth=(self._endpoint.client_id, self._endpoint.client_secret),
                    headers={"Accept": "application/json"},
                )
        except httpx.HTTPError as error:
            raise TokenRefused(f"introspection endpoint unreachable ({type(error).__name__})") from error
        try:
            return json_object(response)
        except ValueError as error:
            raise TokenRefused(f"introspection endpoint {error}") from error

    def _check(self, answer: Mapping[str, Any], now: float) -> None:
        if answer.get("active") is not True:
            raise TokenRefused("the token is not active")
        issuer = answer.get("iss")
        if issuer is not None and issuer != self._settings.issuer:
            raise TokenRefused(f"introspection names issuer {issuer!r}")
        audience = answer.get("aud")
        if audience is not None:
            audiences = audience if isinstance(audience, list) else [audience]
            if self._settings.resource not in audiences:
                raise TokenRefused("the token is not meant for this broker (aud)")
        expires = answer.get("exp")
        if isinstance(expires, int | float) and expires + self._settings.leeway_seconds <= now:
            raise TokenRefused("the token is expired")
