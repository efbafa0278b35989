"""Approvers on the decisions API and the CLI with their identity provider's access tokens.

Beside the approver tokens of the configuration, ``/api/approvals`` and ``/api/grants`` accept
an access token from the single sign-on provider meant for ``web.sso.api_audience``:

    JWT-shaped            verified as broker.channels.sso.provider describes
    anything else         asked of the provider's RFC 7662 endpoint (broker.net.introspection)
                          when ``web.sso.introspection`` is set; else not tried here. Without a
                          configured ``endpoint`` the discovery document's
                          ``introspection_endpoint`` is asked, looked up on the first opaque
                          token; a provider that announces none refuses them all, saying so

Either way the claims are mapped to an approver exactly as the inbox maps an ID token
(broker.channels.sso.identity), groups included. Any failure, the provider or its introspection
endpoint being unreachable or answering garbage included, is a refusal with the reason (the API
answers 401) and a log line: a token that cannot be verified decides nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.model import Approver
from broker.channels.sso.identity import match_claims
from broker.channels.sso.provider import IdentityProvider, SsoError
from broker.config.oauth import IntrospectionSettings
from broker.net.introspection import Introspection, IntrospectionRefused

logger = logging.getLogger(__name__)


class SsoApproverTokens:
    def __init__(
        self,
        provider: IdentityProvider,
        directory: ApproverDirectory,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._provider = provider
        self._directory = directory
        self._clock = clock
        self._transport = transport
        settings = provider.settings
        # The configuration refuses introspection without api_audience; both or neither.
        self._asked = settings.introspection if settings.api_audience is not None else None
        self._audience = settings.api_audience or ""
        self._introspection: Introspection[Mapping[str, Any]] | None = None
        if self._asked is not None and self._asked.endpoint is not None:
            self._introspection = self._introspecting(self._asked)

    def _introspecting(self, endpoint: IntrospectionSettings) -> Introspection[Mapping[str, Any]]:
        settings = self._provider.settings
        return Introspection(
            endpoint,
            dict,
            issuer=settings.issuer,
            audience=self._audience,
            leeway=settings.leeway_seconds,
            # An approver decides with it: an answer that names nobody in particular is no
            # permission to decide, whatever the agents' side accepts.
            require_audience=True,
            clock=self._clock,
            transport=self._transport,
        )

    async def _discovered_introspection(
        self, asked: IntrospectionSettings
    ) -> Introspection[Mapping[str, Any]]:
        """The introspection client, its endpoint taken from the discovery document the first time;
        raises IntrospectionRefused when the provider cannot say where its endpoint is."""
        if self._introspection is not None:
            return self._introspection
        try:
            endpoint = (await self._provider.metadata()).introspection_endpoint
        except SsoError as exc:
            raise IntrospectionRefused(str(exc)) from None
        if endpoint is None:
            raise IntrospectionRefused(
                "the identity provider's discovery document announces no introspection_endpoint; "
                "set web.sso.introspection.endpoint"
            )
        if self._introspection is None:  # another request may have found it meanwhile
            self._introspection = self._introspecting(replace(asked, endpoint=endpoint))
        return self._introspection

    def applies_to(self, token: str) -> bool:
        """Configured approver tokens are looked up first; then JWT-shaped tokens are tried, and any
        other token only when introspection is configured."""
        return _looks_like_jwt(token) or self._asked is not None

    async def approver(self, token: str) -> Approver | str:
        """The approver the token speaks for, or why it speaks for nobody."""
        if _looks_like_jwt(token) or self._asked is None:
            try:
                claims: Mapping[str, Any] = await self._provider.verify_access_token(token)
            except SsoError as exc:
                return _refused("the identity provider token was refused", str(exc))
        else:
            try:
                introspection = await self._discovered_introspection(self._asked)
                claims = await introspection.explained(token.encode("latin-1", "replace"))
            except IntrospectionRefused as exc:
                return _refused(
                    "neither an approver token of this broker nor an identity provider token it accepts",
                    str(exc),
                )
        matched = match_claims(claims, self._directory, self._provider.settings)
        if matched.account is None:
            return _refused("the identity provider token was refused", matched.refusal or "no approver")
        return Approver(matched.account.name, matched.account.groups | matched.groups)


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def _refused(what: str, why: str) -> str:
    logger.warning("decisions API: %s: %s", what, why)
    return f"{what}: {why}"
