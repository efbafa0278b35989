"""The authorization server's ``/logout``: OpenID Connect RP-Initiated Logout 1.0, off until a test
turns it on (`enabled`), so the discovery document names an ``end_session_endpoint`` only then.

Every call is recorded in `calls` with what it was sent and what the server made of it. An
``id_token_hint`` must be an ID token this server signed for the ``client_id`` given with it,
and ``post_logout_redirect_uri`` must be one the client registered (``post_logout_redirect_uris``);
otherwise the answer is a 400 that says why, as a careful provider would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

if TYPE_CHECKING:
    from tests.authserver.server import AuthServer


@dataclass
class LogoutCall:
    params: dict[str, str]
    hint_sub: str | None = None
    """The ``sub`` of a valid ``id_token_hint``; None without one."""
    refusal: str | None = None


@dataclass
class EndSession:
    owner: AuthServer
    enabled: bool = False
    calls: list[LogoutCall] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {"end_session_endpoint": f"{self.owner.issuer}/logout"} if self.enabled else {}

    async def endpoint(self, request: Request) -> Response:
        call = LogoutCall(dict(request.query_params))
        self.calls.append(call)
        if not self.enabled:
            call.refusal = "end_session is off"
            return JSONResponse({"error": "not_found"}, 404)
        try:
            call.hint_sub = self._hint_sub(call.params)
        except ValueError as exc:
            call.refusal = str(exc)
            return JSONResponse({"error": "invalid_request", "error_description": call.refusal}, 400)
        return RedirectResponse(call.params["post_logout_redirect_uri"], status_code=302)

    def _hint_sub(self, params: dict[str, str]) -> str | None:
        client = self.owner.clients.get(params.get("client_id", ""))
        if client is None:
            raise ValueError("unknown client_id")
        back = params.get("post_logout_redirect_uri")
        if back is None or back not in client.metadata.get("post_logout_redirect_uris", []):
            raise ValueError(f"post_logout_redirect_uri {back!r} is not registered")
        hint = params.get("id_token_hint")
        if hint is None:
            return None
        try:
            claims = jwt.decode(hint, self.owner.keys).claims
        except (JoseError, ValueError) as exc:
            raise ValueError(f"id_token_hint does not verify: {exc}") from None
        audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
        if claims.get("iss") != self.owner.issuer or client.client_id not in audiences:
            raise ValueError("id_token_hint was not issued by this server to this client")
        sub = claims.get("sub")
        return sub if isinstance(sub, str) else None
