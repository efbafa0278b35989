"""What one upstream connection adds to its requests: the broker's token and per-agent headers.

Built once per upstream by the pool and kept across reconnects, so a token outlives the
connection that first used it. A connection without `UpstreamAuth` gets no provider and its
requests cost exactly what they did before.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.client_credentials import ClientCredentialsSource
from broker.proxy.upstream.credentials.headers import AgentHeaderTemplates
from broker.proxy.upstream.credentials.network import UpstreamNetwork
from broker.proxy.upstream.credentials.settings import UpstreamAuth
from broker.proxy.upstream.credentials.token_exchange import TokenExchanger


class UpstreamCredentials:
    def __init__(self, auth: UpstreamAuth, *, server: str, network: UpstreamNetwork | None = None) -> None:
        """`network` is the upstream's own: the token endpoint is reached through it too."""
        self.server = server
        self._templates = AgentHeaderTemplates(auth.agent_headers) if auth.agent_headers else None
        self.token_source = (
            ClientCredentialsSource(auth.client_credentials, server=server, network=network)
            if auth.client_credentials is not None
            else None
        )
        self.exchanger = (
            TokenExchanger(self.token_source)
            if auth.token_exchange and self.token_source is not None
            else None
        )

    async def headers(self, base: Mapping[str, str], caller: UpstreamCaller | None) -> dict[str, str]:
        """`base` with this upstream's credentials for a request made for `caller` (None: the
        broker's own requests, such as the handshake, which carry no agent headers)."""
        headers = dict(base)
        if self._templates is not None:
            headers.update(self._templates.render(caller))
        if self.exchanger is not None and caller is not None:
            headers["Authorization"] = f"Bearer {await self.exchanger.bearer(caller)}"
        elif self.token_source is not None:
            headers["Authorization"] = f"Bearer {await self.token_source.bearer()}"
        return headers

    def rejected(self, headers: Mapping[str, str]) -> bool:
        """The upstream answered 401 to a request sent with `headers`; True when a new token may help."""
        authorization = headers.get("Authorization", "")
        if self.token_source is None or not authorization.startswith("Bearer "):
            return False
        rejected = authorization.removeprefix("Bearer ")
        self.token_source.reject(rejected)
        if self.exchanger is not None:
            self.exchanger.reject(rejected)
        return True

    async def aclose(self) -> None:
        if self.token_source is not None:
            await self.token_source.aclose()
