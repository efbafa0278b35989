"""The authorization server's records (users, clients, codes, tokens) and authlib request adapters."""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# authlib refuses plain-HTTP URIs unless told it is a test; the server only listens on loopback.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

from authlib.oauth2.rfc6749 import ClientMixin, JsonPayload, JsonRequest, OAuth2Payload, OAuth2Request

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
SCOPES = ["openid", "profile", "email", "tools:read", "tools:call", "trade", "offline_access"]


@dataclass(frozen=True)
class User:
    sub: str
    email: str
    groups: tuple[str, ...] = ()

    def get_user_id(self) -> str:
        return self.sub


DEFAULT_USERS = {
    "alice": User("alice", "alice@example.com", ("trading-leads", "approvers")),
    "bob": User("bob", "bob@example.com", ("trading-leads",)),
    "carol": User("carol", "carol@example.com", ()),
}


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str | None
    metadata: dict[str, Any]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.metadata.get("redirect_uris") or []
        return uris[0] if uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set((self.metadata.get("scope") or " ".join(SCOPES)).split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in (self.metadata.get("redirect_uris") or [])

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and hmac.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return method != "none"
        return method == self.metadata.get("token_endpoint_auth_method", "client_secret_basic")

    def check_response_type(self, response_type: str) -> bool:
        return response_type in (self.metadata.get("response_types") or ["code"])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.metadata.get("grant_types") or ["authorization_code"])


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    resource: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: int

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass
class Token:
    """What the server remembers of a token it issued: for refresh and for introspection."""

    access_token: str
    refresh_token: str | None
    client_id: str
    scope: str
    user: User | None
    resource: str | None
    issued_at: int
    expires_in: int
    claims: dict[str, Any] = field(default_factory=dict)
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User | None:
        return self.user

    def get_client(self) -> Client | None:
        return None


# -- requests: authlib's framework-neutral request objects, filled from Starlette ---------------


class _FormPayload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: dict[str, list[str]] = {}
        for key, value in pairs:
            self._datalist.setdefault(key, []).append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class FormRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, url: str, headers: Mapping[str, str], pairs: list[tuple[str, str]]):
        super().__init__(method=method, uri=url, headers=headers)
        self.payload = _FormPayload(pairs)
        self._pairs = pairs

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data  # type: ignore[no-any-return]

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data  # type: ignore[no-any-return]


class _Json(JsonPayload):  # type: ignore[misc]
    def __init__(self, data: Any) -> None:
        self._data = data

    @property
    def data(self) -> Any:
        return self._data


class JsonBodyRequest(JsonRequest):  # type: ignore[misc]
    def __init__(self, method: str, url: str, headers: Mapping[str, str], data: Any) -> None:
        super().__init__(method, url, headers)
        self.payload = _Json(data)
