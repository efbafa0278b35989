"""JWT access tokens (RFC 9068) checked against the authorization server's keys, with joserfc.

A token is accepted only when all of these hold, in this order (the first failure is the answer):

1. it is a compact JWS whose header `alg` is in the configured allow-list (asymmetric only, so
   `none` and HS256-keyed-with-the-public-key never verify);
2. its `kid` names a key of the issuer's JWKS (an unknown kid refetches the set, rate-bounded,
   see jwks.py; no key set at all refuses);
3. the signature verifies with that key under that algorithm;
4. `iss` equals the configured issuer, `aud` is or contains the broker's resource URI, `exp` is
   present and not past, `nbf` (if present) is not ahead, each within `leeway` seconds;
5. the agent claim (`sub`, `client_id` falling back to `azp`, or a named claim) is a non-empty
   string; and
6. the scopes (`scope` string or `scp` list) include every required scope; otherwise the answer
   is 403 `insufficient_scope` rather than 401.

Failures 1-5 answer 401 `invalid_token` and log one line naming the reason (never the token).

Hot path: a token that verified is remembered (by its whole Authorization header) with its expiry, so the next call with it costs a
dict lookup and a clock read. The memory only holds tokens that verified (an attacker cannot grow
it without valid tokens) and is emptied when it reaches `cache_size`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from broker.config.oauth import OAuthSettings
from broker.net.jwks import JwksCache
from broker.proxy.auth.model import AgentIdentity, Challenge, bearer_challenge

logger = logging.getLogger(__name__)


class TokenRefused(Exception):
    pass


def looks_like_jwt(token: bytes) -> bool:
    return token.count(b".") == 2


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return frozenset(item for item in scp if isinstance(item, str))
    if isinstance(scp, str):
        return frozenset(scp.split())
    return frozenset()


def agent_of(claims: Mapping[str, Any], claim: str) -> str | None:
    value = claims.get(claim)
    if value is None and claim == "client_id":
        value = claims.get("azp")
    return value if isinstance(value, str) and value else None


class JwtVerifier:
    def __init__(
        self,
        settings: OAuthSettings,
        keys: JwksCache,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._algorithms = list(settings.algorithms)
        self._required = frozenset(settings.required_scopes)
        self._verified: dict[bytes, tuple[AgentIdentity, float]] = {}
        self._cache_size = cache_size
        scope = " ".join(settings.required_scopes) or None
        self._scope = scope
        self._metadata = settings.resource_metadata_url
        # Both registries are built once: per token, building them cost more than the claims check.
        self._signatures = jws.JWSRegistry(algorithms=self._algorithms)
        self._leeway = int(settings.leeway_seconds)
        self._claims = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=self._leeway,
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "value": settings.resource},
            exp={"essential": True},
        )

    def challenge(
        self, description: str | None = None, *, status: int = 401, error: str | None = None
    ) -> Challenge:
        if description is None:
            message = "Unauthorized: present an access token as 'Authorization: Bearer <token>'"
        else:
            message = f"Unauthorized: {description}" if status == 401 else f"Forbidden: {description}"
        return bearer_challenge(
            status,
            message,
            error=error or ("invalid_token" if description is not None else None),
            description=description,
            resource_metadata=self._metadata,
            scope=self._scope,
        )

    def refuse(self, refused: TokenRefused) -> Challenge:
        logger.warning("oauth: access token refused: %s", refused)
        return self.challenge(str(refused))

    def admit(self, identity: AgentIdentity) -> AgentIdentity | Challenge:
        """403 insufficient_scope unless the identity holds every required scope."""
        missing = self._required - identity.scopes
        if not missing:
            return identity
        logger.warning("oauth: agent %s lacks scopes %s", identity.agent, " ".join(sorted(missing)))
        return self.challenge(
            f"the token lacks the scopes {' '.join(sorted(missing))}", status=403, error="insufficient_scope"
        )

    def remembered(self, authorization: bytes) -> AgentIdentity | None:
        """The identity of a token that verified before and has not expired since (no I/O)."""
        remembered = self._verified.get(authorization)
        if remembered is None:
            return None
        identity, expires = remembered
        if self._clock() < expires:
            return identity
        del self._verified[authorization]
        return None

    async def verify_token(
        self, token: bytes, authorization: bytes | None = None
    ) -> AgentIdentity | Challenge:
        """`authorization`: the whole header, the key under which a verified token is remembered."""
        key = authorization if authorization is not None else b"Bearer " + token
        identity = self.remembered(key)
        if identity is not None:
            return identity
        try:
            identity, expires = await self._verify(token)
        except TokenRefused as refused:
            return self.refuse(refused)
        admitted = self.admit(identity)
        if isinstance(admitted, Challenge):
            return admitted
        if len(self._verified) >= self._cache_size:
            self._verified.clear()
        self._verified[key] = (identity, expires)
        return identity

    async def _verify(self, token: bytes) -> tuple[AgentIdentity, float]:
        # The token is parsed once: its header picks the key, the same parse is then verified.
        try:
            compact = jws.extract_compact(token)
            header = compact.headers()
        except (JoseError, ValueError, TypeError, UnicodeDecodeError) as error:
            raise TokenRefused("not a well-formed JWT") from error
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise TokenRefused(f"algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("kid is not a string")
        key = self._keys.key(kid)
        if key is None:
            await self._keys.refresh()
            key = self._keys.key(kid)
            if key is None:
                raise TokenRefused(f"no signing key {kid!r} at the issuer (or its keys are unavailable)")
        elif not self._keys.fresh:
            await self._keys.refresh()
        try:
            verified = jws.validate_compact(compact, key, registry=self._signatures)
        except (JoseError, ValueError, TypeError) as error:
            raise TokenRefused(f"signature does not verify ({type(error).__name__})") from error
        if not verified:
            raise TokenRefused("signature does not verify (BadSignatureError)")
        try:
            claims = json.loads(compact.payload)
        except (ValueError, TypeError) as error:
            raise TokenRefused("the payload is not JSON") from error
        if not isinstance(claims, dict):
            raise TokenRefused("the payload is not a JSON object")
        try:
            self._claims.validate(claims)
        except JoseError as error:
            raise TokenRefused(f"{error.error}: {error.description}") from error
        agent = agent_of(claims, self._settings.agent_claim)
        if agent is None:
            raise TokenRefused(f"no {self._settings.agent_claim!r} claim to name the agent")
        identity = AgentIdentity(agent, "jwt", scopes_of(claims), claims)
        return identity, float(claims["exp"]) + self._leeway
