"""authlib grants and endpoints wired to the test authorization server (see server.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import JsonRequest, OAuth2Request, grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7591 import ClientMetadataClaims, ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import OpenIDCode
from joserfc import jwt
from joserfc.errors import JoseError
from starlette.responses import JSONResponse, RedirectResponse, Response

from tests.authserver.models import (
    ACCESS_TOKEN_TYPE,
    AUTH_METHODS,
    SCOPES,
    TOKEN_EXCHANGE,
    AuthorizationCode,
    Client,
    FormRequest,
    JsonBodyRequest,
    Token,
    User,
)

if TYPE_CHECKING:
    from tests.authserver.server import AuthServer


# -- grants ---------------------------------------------------------------------------------------


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        server: AuthServer = self.server.owner
        server.codes[code] = granted = AuthorizationCode(
            code=code,
            client_id=request.client.client_id,
            redirect_uri=data.get("redirect_uri", ""),
            scope=request.scope or "",
            user=request.user,
            resource=data.get("resource"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            nonce=data.get("nonce"),
            auth_time=int(time.time()),
        )
        server.authorizations.append(granted)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        found = self.server.owner.codes.get(code)
        if found is not None and found.client_id == client.client_id:
            self.server.owner.current_resource = found.resource
            return found
        return None

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        self.server.owner.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
        return authorization_code.user


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        found = self.server.owner.refresh_tokens.get(refresh_token)
        if found is None or found.revoked:
            return None
        self.server.owner.current_resource = self.request.payload.data.get("resource") or found.resource
        return found

    def authenticate_user(self, refresh_token: Token) -> User | None:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: Token) -> None:
        refresh_token.revoked = True


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _TokenExchangeGrant(grants.BaseGrant, grants.TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693: a client trades an access token this server issued for one meant for another
    audience; the new token keeps the subject and names the client as the actor (`act`)."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise InvalidGrantError("client may not exchange tokens")
        data = self.request.payload.data
        if data.get("subject_token_type") != ACCESS_TOKEN_TYPE or not data.get("subject_token"):
            raise InvalidRequestError("subject_token of type access_token required")
        server: AuthServer = self.server.owner
        try:
            subject = jwt.decode(data["subject_token"], server.keys).claims
        except (JoseError, ValueError) as error:
            raise InvalidGrantError("subject_token is not valid") from error
        if subject.get("iss") != server.issuer or subject.get("exp", 0) < time.time():
            raise InvalidGrantError("subject_token is not valid")
        self.request.client = client
        self.request.user = server.users.get(subject.get("sub", "")) or User(subject.get("sub", ""), "")
        server.current_resource = data.get("resource") or data.get("audience")
        server.current_extra = {"act": {"sub": client.client_id}}
        self.request.scope = data.get("scope") or subject.get("scope", "")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(
            user=self.request.user, scope=self.request.scope, include_refresh_token=False
        )
        token["issued_token_type"] = ACCESS_TOKEN_TYPE
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class _S256Required(CodeChallenge):  # type: ignore[misc]
    """OAuth 2.1: every authorization request carries a challenge, and only S256 is accepted."""

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class _OpenIDCode(OpenIDCode):  # type: ignore[misc]
    def __init__(self, owner: AuthServer) -> None:
        super().__init__(require_nonce=False)
        self.owner = owner

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return False

    def resolve_client_private_key(self, client: Client) -> Any:
        return self.owner.keys.get_by_kid(self.owner.signing_kid)

    def get_client_algorithm(self, client: Client) -> str:
        return self.owner.signing_alg

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": self.owner.signing_alg, "kid": self.owner.signing_kid}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": self.owner.issuer, "aud": [client.client_id]}

    def generate_user_info(self, user: User, scope: str) -> dict[str, Any]:
        return {"sub": user.sub, "email": user.email, "groups": list(user.groups)}


class _Registration(ClientRegistrationEndpoint):  # type: ignore[misc]
    def __init__(self, owner: AuthServer) -> None:
        super().__init__(owner.oauth, claims_classes=[ClientMetadataClaims])
        self.owner = owner

    def authenticate_token(self, request: JsonRequest) -> bool:
        return True  # open registration, as the MCP authorization specification expects

    def get_server_metadata(self) -> dict[str, Any]:
        return self.owner.metadata()

    def save_client(
        self, client_info: dict[str, Any], client_metadata: dict[str, Any], request: Any
    ) -> Client:
        metadata = dict(client_metadata)
        metadata.setdefault("token_endpoint_auth_method", "client_secret_basic")
        secret = None if metadata["token_endpoint_auth_method"] == "none" else client_info["client_secret"]
        client = Client(client_info["client_id"], secret, metadata)
        self.owner.clients[client.client_id] = client
        return client

    def generate_client_info(self, request: Any) -> dict[str, Any]:
        info: dict[str, Any] = super().generate_client_info(request)
        if (request.payload.data or {}).get("token_endpoint_auth_method") == "none":
            info.pop("client_secret", None)
            info.pop("client_secret_expires_at", None)
        return info


class _Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def __init__(self, owner: AuthServer) -> None:
        super().__init__(owner.oauth)
        self.owner = owner

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        self.owner.introspection_hits += 1
        return self.owner.tokens.get(token_string) or self.owner.refresh_tokens.get(token_string)

    def check_permission(self, token: Token, client: Client, request: Any) -> bool:
        return True

    def introspect_token(self, token: Token) -> dict[str, Any]:
        claims = dict(token.claims)
        claims.update(
            active=True,
            client_id=token.client_id,
            token_type="Bearer",
            scope=token.scope,
            iss=self.owner.issuer,
            iat=token.issued_at,
            exp=token.issued_at + token.expires_in,
        )
        if token.user is not None:
            claims.setdefault("sub", token.user.sub)
            claims.setdefault("username", token.user.sub)
        if token.resource:
            claims["aud"] = token.resource
        return claims


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, owner: AuthServer) -> None:
        super().__init__(scopes_supported=SCOPES)
        self.owner = owner

    def query_client(self, client_id: str) -> Client | None:
        return self.owner.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.owner.remember(token, request)

    def generate_token(
        self,
        grant_type: str,
        client: Client,
        user: User | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        return self.owner.issue(grant_type, client, user, scope or "", include_refresh_token)

    def create_oauth2_request(self, request: FormRequest) -> FormRequest:
        return request

    def create_json_request(self, request: JsonBodyRequest) -> JsonBodyRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: Iterable[tuple[str, str]]) -> Response:
        headers = dict(headers)
        if isinstance(body, dict):
            return JSONResponse(body, status_code=status, headers=headers)
        if status == 302:
            return RedirectResponse(headers.pop("Location"), status_code=302, headers=headers)
        return Response(body, status_code=status, headers=headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass
