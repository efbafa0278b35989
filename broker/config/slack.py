"""``slack``: posting held calls to Slack and taking decisions from its buttons.

Each secret is given inline or through ``<name>_env``; which ones are required depends on the
mode (http needs the signing secret, socket the app-level token).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker.config.errors import ConfigError


class SlackEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["http", "socket"] = "http"
    bot_token: str | None = None
    bot_token_env: str | None = None
    signing_secret: str | None = None
    signing_secret_env: str | None = None
    app_token: str | None = None
    app_token_env: str | None = None
    default_channel: str | None = Field(default=None, min_length=1)
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    user_groups: dict[str, str] = {}
    """Broker group -> Slack user group id: its members count as members of the broker group."""
    group_cache_seconds: float = Field(default=300.0, gt=0)

    @field_validator("user_groups")
    @classmethod
    def _usergroup_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for group, usergroup in value.items():
            if not usergroup.startswith("S") or not usergroup.isalnum() or not usergroup.isupper():
                raise ValueError(f"{group}: {usergroup!r} is not a Slack user group id (like S0123ABCD)")
        return value


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str
    mode: Literal["http", "socket"] = "http"
    """http: Slack calls POST /slack/interactions; socket: the broker connects out (Socket Mode)."""
    signing_secret: str | None = None
    """Verifies requests to /slack/interactions; without it that endpoint is not served."""
    app_token: str | None = None
    """App-level token (xapp-...) with connections:write, for Socket Mode."""
    default_channel: str | None = None
    """For rules that name no channel (or a bare ``slack``)."""
    base_url: str | None = None
    """The Web API base URL; None: https://slack.com/api/."""
    user_groups: Mapping[str, str] = field(default_factory=dict)
    group_cache_seconds: float = 300.0


def slack_settings(entry: SlackEntry, environ: Mapping[str, str], path: Path) -> SlackSettings:
    bot_token = _secret(entry, "bot_token", environ, path, required=True)
    signing_secret = _secret(entry, "signing_secret", environ, path, required=entry.mode == "http")
    app_token = _secret(entry, "app_token", environ, path, required=entry.mode == "socket")
    assert bot_token is not None  # required above
    return SlackSettings(
        bot_token=bot_token,
        mode=entry.mode,
        signing_secret=signing_secret,
        app_token=app_token,
        default_channel=entry.default_channel,
        base_url=entry.base_url,
        user_groups=dict(entry.user_groups),
        group_cache_seconds=entry.group_cache_seconds,
    )


def _secret(
    entry: SlackEntry, name: str, environ: Mapping[str, str], path: Path, *, required: bool
) -> str | None:
    """`name` given inline or through `<name>_env`; ConfigError when required and missing."""
    inline, variable = getattr(entry, name), getattr(entry, f"{name}_env")
    if inline and variable:
        raise ConfigError(f"{path}: slack: give {name} or {name}_env, not both")
    value = inline or (environ.get(variable) if variable else None)
    if variable and not value:
        raise ConfigError(f"{path}: slack.{name}_env: environment variable {variable} is not set")
    if required and not value:
        raise ConfigError(f"{path}: slack: {name} (or {name}_env) is required")
    return value or None
