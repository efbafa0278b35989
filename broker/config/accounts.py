"""``agents`` and ``approvers``: who may call tools and who may decide on held calls.

Keys and tokens are given inline, through an environment variable, or as a stored SHA-256;
only digests leave this module. The two groups are checked against each other, because an agent
that could also decide could approve its own calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.approvals.approvers import ApproverAccount
from broker.config.errors import ConfigError
from broker.proxy.auth.api_keys import AgentCredential


class AgentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str | None = None
    api_key_env: str | None = None
    api_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    acts_for: list[str] = []
    """Approvers (names in `approvers`) this agent acts for: they may not approve its calls."""
    hold_budget: float | None = Field(default=None, gt=0)
    """Seconds before this agent gets the 'pending approval' answer (under its client's timeout)."""
    progress_resets_timeout: bool = True
    """False for a client that sends a progress token but does not restart its timeout on progress."""

    @model_validator(mode="after")
    def _exactly_one_key(self) -> AgentEntry:
        given = [name for name in ("api_key", "api_key_env", "api_key_sha256") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of api_key, api_key_env, api_key_sha256")
        return self


class ApproverEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: list[str] = []
    token: str | None = None
    token_env: str | None = None
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    slack_user: str | None = None
    password_hash: str | None = None
    oidc_sub: str | None = Field(default=None, min_length=1)
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")

    @field_validator("password_hash")
    @classmethod
    def _usable_password_hash(cls, value: str | None) -> str | None:
        if value is not None:
            # Imported here: the web package itself reads the configuration's WebSettings.
            from broker.channels.web.passwords import parse_password_hash

            parse_password_hash(value)  # a PasswordHashError is a ValueError, reported with its location
        return value


def agent_credentials(
    agents: Mapping[str, AgentEntry], environ: Mapping[str, str], path: Path
) -> dict[str, AgentCredential]:
    credentials: dict[str, AgentCredential] = {}
    for agent, entry in agents.items():
        if entry.api_key_sha256:
            digest = entry.api_key_sha256
        else:
            key = entry.api_key if entry.api_key else environ.get(entry.api_key_env or "")
            if not key:
                raise ConfigError(
                    f"{path}: agents.{agent}: environment variable {entry.api_key_env} is not set"
                )
            digest = hashlib.sha256(key.encode()).hexdigest()
        credentials[agent] = AgentCredential(agent=agent, key_sha256=digest)
    return credentials


def approver_accounts(
    approvers: Mapping[str, ApproverEntry], environ: Mapping[str, str], path: Path, *, agent_side: bool
) -> list[ApproverAccount]:
    """`agent_side`: names and groups only, no tokens (see `broker.config.settings.load_settings`)."""
    accounts = []
    for name, approver in approvers.items():
        token_digest = None if agent_side else approver.token_sha256
        if not agent_side and token_digest is None and (approver.token or approver.token_env):
            token = approver.token or environ.get(approver.token_env or "")
            if not token:
                raise ConfigError(
                    f"{path}: approvers.{name}: environment variable {approver.token_env} is not set"
                )
            token_digest = hashlib.sha256(token.encode()).hexdigest()
        accounts.append(
            ApproverAccount(
                name=name,
                groups=frozenset(approver.groups),
                token_sha256=token_digest,
                slack_user=approver.slack_user,
                password_hash=approver.password_hash,
                oidc_sub=approver.oidc_sub,
                email=approver.email,
            )
        )
    return accounts


def check_accounts(
    agents: Mapping[str, AgentEntry],
    credentials: Mapping[str, AgentCredential],
    approvers: Mapping[str, ApproverEntry],
    accounts: Sequence[ApproverAccount],
    path: Path,
) -> None:
    """Raises ConfigError when an agent could decide, or acts for an approver who does not exist."""
    if clash := sorted(set(agents) & set(approvers)):
        raise ConfigError(f"{path}: {', '.join(clash)} cannot be both an agent and an approver")
    agent_keys = {credential.key_sha256: agent for agent, credential in credentials.items()}
    for account in accounts:
        if account.token_sha256 is not None and account.token_sha256 in agent_keys:
            # Otherwise the agent could approve its own calls through the decisions API.
            raise ConfigError(
                f"{path}: approvers.{account.name}: its token is the API key of agent "
                f"{agent_keys[account.token_sha256]}; agents must never be able to decide"
            )
    for agent, entry in agents.items():
        if unknown := sorted(set(entry.acts_for) - set(approvers)):
            raise ConfigError(f"{path}: agents.{agent}.acts_for: {', '.join(unknown)} is not in approvers")
