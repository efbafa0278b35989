"""Approvers on the decisions API and the CLI with their identity provider's access tokens.

Beside the approver tokens of the configuration, ``/api/approvals`` and ``/api/grants`` accept
an access token from the single sign-on provider meant for ``web.sso.api_audience``:

    JWT-shaped            verified as broker.channels.sso.provider describes
    anything else         asked of the provider's RFC 7662 endpoint (broker.net.introspection)
                          when ``web.sso.introspection`` is set; else not tried here

Either way the claims are mapped to an approver exactly as the inbox maps an ID token
(broker.channels.sso.identity), groups included. Any failure, the provider or its introspection
endpoint being unreachable or answering garbage included, is a refusal with the reason (the API
answers 401) and a log line: a token that cannot be verified decides nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.model import Approver
from broker.channels.sso.identity import match_claims
from broker.channels.sso.provider import IdentityProvider, SsoError
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
        settings = provider.settings
        self._introspection: Introspection[Mapping[str, Any]] | None = None
        if settings.introspection is not None and settings.api_audience is not None:
            self._introspection = Introspection(
                settings.introspection,
                dict,
                issuer=settings.issuer,
                audience=settings.api_audience,
                leeway=settings.leeway_seconds,
                # An approver decides with it: an answer that names nobody in particular is no
                # permission to decide, whatever the agents' side accepts.
                require_audience=True,
                clock=clock,
                transport=transport,
            )

    def applies_to(self, token: str) -> bool:
        """Configured approver tokens are looked up first; then JWT-shaped tokens are tried, and any
        other token only when introspection is configured."""
        return _looks_like_jwt(token) or self._introspection is not None

    async def approver(self, token: str) -> Approver | str:
        """The approver the token speaks for, or why it speaks for nobody."""
        if _looks_like_jwt(token) or self._introspection is None:
            try:
                claims: Mapping[str, Any] = await self._provider.verify_access_token(token)
            except SsoError as exc:
                return _refused("the identity provider token was refused", str(exc))
        else:
            try:
                claims = await self._introspection.explained(token.encode("latin-1", "replace"))
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
