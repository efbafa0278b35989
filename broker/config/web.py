"""``web``: the approvers' inbox: session cookies, a trusted sign-in header and single sign-on.

The agent side (`broker serve --stdio`) serves no inbox, so it reads neither the session secret
nor the single sign-on settings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.config.errors import ConfigError
from broker.config.sso import SsoConfigError, SsoEntry, SsoSettings, sso_settings


class WebEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    session_secret_env: str | None = None
    trusted_header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$")
    trusted_proxies: list[str] = []
    cookie_secure: bool | None = None
    sso: SsoEntry | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (e.g. 127.0.0.1/32)") from None
        return value

    @model_validator(mode="after")
    def _header_needs_proxies(self) -> WebEntry:
        if self.trusted_header and not self.trusted_proxies:
            raise ValueError("trusted_header is only honoured from trusted_proxies: list the proxy addresses")
        return self


@dataclass(frozen=True)
class WebSettings:
    enabled: bool = True
    session_secret: str | None = None
    """Signs session cookies; None: a random secret per process (sessions end on restart)."""
    trusted_header: str | None = None
    """A header naming the signed-in user, set by an authenticating reverse proxy."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cookie_secure: bool | None = None
    """None: Secure cookies when the request came over https."""
    sso: SsoSettings | None = None


def web_settings(entry: WebEntry, environ: Mapping[str, str], path: Path, *, agent_side: bool) -> WebSettings:
    session_secret = None
    if entry.session_secret_env and not agent_side:
        session_secret = environ.get(entry.session_secret_env)
        if not session_secret:
            raise ConfigError(
                f"{path}: web.session_secret_env: environment variable {entry.session_secret_env} is not set"
            )
        if len(session_secret) < 32:
            raise ConfigError(
                f"{path}: web.session_secret_env: {entry.session_secret_env} must hold at least 32 characters"
            )
    return WebSettings(
        enabled=entry.enabled and not agent_side,
        session_secret=session_secret,
        trusted_header=entry.trusted_header,
        trusted_proxies=tuple(
            ipaddress.ip_network(network, strict=False) for network in entry.trusted_proxies
        ),
        cookie_secure=entry.cookie_secure,
        sso=_sso(entry.sso, environ, path) if entry.sso is not None and not agent_side else None,
    )


def _sso(entry: SsoEntry, environ: Mapping[str, str], path: Path) -> SsoSettings:
    try:
        return sso_settings(entry, environ, path)
    except SsoConfigError as exc:
        raise ConfigError(str(exc)) from None
