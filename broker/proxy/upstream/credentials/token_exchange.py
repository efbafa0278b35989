"""OAuth 2.0 token exchange (RFC 8693): a token for the upstream that names the calling agent.

With ``"auth": {"type": "token_exchange", ...}`` (the same keys as the client-credentials grant),
each ``tools/call`` made for an agent that signed in with OAuth is sent with a token the
authorization server issued in exchange for the agent's own access token
(``subject_token``), for this upstream's ``audience``/``resource``/``scope``. The agent's token
itself never reaches the upstream. Exchanged tokens are cached per agent and subject token until
shortly before they expire, so an agent's calls cost one exchange per token lifetime.

The broker's own requests (handshake, tool listing, the notification stream) carry its
client-credentials token. An agent without a token (one that presented an API key) cannot be
exchanged for: its calls are refused with that reason, never sent with the broker's token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.client_credentials import ClientCredentialsSource, Token
from broker.proxy.upstream.credentials.errors import CredentialError

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
MAX_CACHED: Final = 4096


class TokenExchanger:
    def __init__(
        self, endpoint: ClientCredentialsSource, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._cache: dict[tuple[str, str], Token] = {}
        self.exchanges = 0

    async def bearer(self, caller: UpstreamCaller) -> str:
        if not caller.token:
            raise CredentialError(
                f"this upstream takes a token exchanged for the agent's own, and agent '{caller.agent}' "
                "did not sign in with OAuth"
            )
        key = (caller.agent, caller.token)
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached.expires_at:
            return cached.value
        token = await self._endpoint.request_token(
            {
                "grant_type": GRANT_TYPE,
                "subject_token": caller.token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "requested_token_type": ACCESS_TOKEN_TYPE,
            }
        )
        self.exchanges += 1
        if len(self._cache) >= MAX_CACHED:
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if now < v.expires_at}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[key] = token
        return token.value

    def reject(self, value: str) -> None:
        self._cache = {key: token for key, token in self._cache.items() if token.value != value}
