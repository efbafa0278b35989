"""API keys and access tokens on one endpoint.

    a token that verified before   -> its agent, until it expires (one dict lookup)
    no Authorization header        -> anonymous (if allowed) or 401 with the OAuth challenge
    a known API key                -> that agent (API keys keep working beside OAuth)
    a JWT-shaped bearer token      -> jwt.py decides (401 invalid_token / 403 insufficient_scope)
    any other bearer token         -> introspection.py decides, when configured; else 401 invalid_token

Only the `Authorization` header is read: a token in the query string or body is never looked at.
"""

from __future__ import annotations

import logging

from broker.proxy.auth.api_keys import ApiKeyVerifier
from broker.proxy.auth.introspection import Introspector
from broker.proxy.auth.jwt import JwtVerifier, TokenRefused, looks_like_jwt
from broker.proxy.auth.model import AgentIdentity, Challenge

logger = logging.getLogger(__name__)


class ChainVerifier:
    def __init__(
        self, api_keys: ApiKeyVerifier, tokens: JwtVerifier, introspector: Introspector | None = None
    ) -> None:
        self._api_keys = api_keys
        self._tokens = tokens
        self._introspector = introspector
        self._missing = tokens.challenge()

    async def verify(self, authorization: bytes | None) -> AgentIdentity | Challenge:
        if authorization:
            # Tokens are long: looking one up as an API key would hash it on every call.
            remembered = self._tokens.remembered(authorization)
            if remembered is not None:
                return remembered
        identity = self._api_keys.identify(authorization)
        if identity is not None:
            return identity
        if not authorization:
            return self._missing
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            logger.warning("oauth: refused an Authorization header that is not a bearer token")
            return self._tokens.challenge("use the Bearer scheme")
        if not looks_like_jwt(token):
            if self._introspector is not None:
                try:
                    return self._tokens.admit(await self._introspector.identify(token))
                except TokenRefused as refused:
                    return self._tokens.refuse(refused)
            logger.warning("oauth: refused a bearer token that is neither an API key nor a JWT")
            return self._tokens.challenge("unknown API key or malformed access token")
        return await self._tokens.verify_token(token, authorization)
