"""The broker's own configuration file (YAML or JSON).

```yaml
servers: servers.json          # an mcpServers file, as Claude Desktop / Cursor use; or inline:
# servers: {mcpServers: {exchange: {command: python, args: [-m, exchange_server]}}}
policy: policies/exchange.yaml
listen: {host: 127.0.0.1, port: 8765}
agents:
  trading-bot: {api_key_env: TRADING_BOT_KEY}     # the key comes from the environment
  ci-agent: {api_key_sha256: 9f86d0...}           # or only its SHA-256 is stored
allow_anonymous: false                            # agents without a key are rejected (401)
database_url: sqlite:///broker.db                 # BROKER_DATABASE_URL overrides
rate_limits: {backend: redis, redis_url: "redis://127.0.0.1:6379/0"}   # memory | database | redis
shutdown_grace_seconds: 20                        # on SIGTERM, how long held agents may still get decisions
limits: {header_timeout: 10, body_timeout: 30, max_connections_per_address: 256}   # the defaults
```
Relative paths are resolved against the configuration file's directory.

Exception tree::

    ConfigError        the file cannot be read, parsed or validated; the message says where
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker.approvals.approvers import ApproverAccount
from broker.config.oauth import MissingSecret, OAuthEntry, OAuthSettings, oauth_settings
from broker.config.positions import describe_validation_error
from broker.config.sso import SsoConfigError, SsoEntry, SsoSettings, sso_settings
from broker.proxy.identity import AgentCredential
from broker.proxy.waiting import DEFAULT_END_GRACE, DEFAULT_HOLD_BUDGET, ClientWaits
from broker.store.database import Backend, backend_of


class ConfigError(Exception):
    pass


class _AgentEntry(BaseModel):
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
    def _exactly_one_key(self) -> _AgentEntry:
        given = [name for name in ("api_key", "api_key_env", "api_key_sha256") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of api_key, api_key_env, api_key_sha256")
        return self


class _ApproverEntry(BaseModel):
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
            # Imported here: the web package itself reads this module's WebSettings.
            from broker.channels.web.passwords import parse_password_hash

            parse_password_hash(value)  # a PasswordHashError is a ValueError, reported with its location
        return value


class _Approvals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hold_budget: float = Field(default=DEFAULT_HOLD_BUDGET, gt=0)
    progress_interval: float = Field(default=5.0, gt=0)
    check_tool: str = Field(default="check_approval", min_length=1)
    cancel_tool: str = Field(default="cancel_approval", min_length=1)
    default_approvers: list[str] = ["*"]
    sweep_interval: float = Field(default=1.0, gt=0)


class _Listen(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)


class _Web(BaseModel):
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
    def _header_needs_proxies(self) -> _Web:
        if self.trusted_header and not self.trusted_proxies:
            raise ValueError("trusted_header is only honoured from trusted_proxies: list the proxy addresses")
        return self


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    max_connections_per_address: int = Field(default=256, ge=1, le=1_000_000)


class _RateLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "database", "redis"] | None = None
    redis_url: str | None = None


class _Slack(BaseModel):
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


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    servers: str | dict[str, Any]
    policy: str
    listen: _Listen = _Listen()
    agents: dict[str, _AgentEntry] = {}
    allow_anonymous: bool = False
    allowed_origins: list[str] | None = None
    database_url: str | None = None
    stdio_agent: str = "stdio"
    upstream_call_timeout: float | None = Field(default=None, gt=0)
    policy_poll_seconds: float = Field(default=1.0, gt=0)
    approvers: dict[str, _ApproverEntry] = {}
    approvals: _Approvals = _Approvals()
    web: _Web = _Web()
    rate_limits: _RateLimits = _RateLimits()
    shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=3600)
    limits: _Limits = _Limits()
    slack: _Slack | None = None
    oauth: OAuthEntry | None = None


@dataclass(frozen=True)
class ApprovalSettings:
    hold_budget: float = DEFAULT_HOLD_BUDGET
    progress_interval: float = 5.0
    check_tool: str = "check_approval"
    cancel_tool: str = "cancel_approval"
    default_approvers: tuple[str, ...] = ("*",)
    sweep_interval: float = 1.0
    session_end_grace: float = DEFAULT_END_GRACE
    """Seconds an agent's session end (DELETE) waits for a cancellation it overtook before it
    withdraws the calls the session waits on (`broker.proxy.agent_request`)."""


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


@dataclass(frozen=True)
class LimitSettings:
    """What every HTTP connection is held to; see broker/net/limits.py."""

    header_timeout: float = 10.0
    """Seconds a request head may take, from the connection's opening or the request's first byte."""
    body_timeout: float = 30.0
    """Seconds a request body may take after its head."""
    max_connections_per_address: int = 256
    """Connections open at once from one client address (web.trusted_proxies are not capped)."""


@dataclass(frozen=True)
class RateLimitSettings:
    backend: Literal["memory", "database", "redis"] | None = None
    """Where rate-limit counters live; None: in memory on SQLite, in the database on PostgreSQL
    (replicas then share them)."""
    redis_url: str | None = None
    """For backend redis; BROKER_REDIS_URL overrides it."""


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


@dataclass(frozen=True)
class BrokerSettings:
    servers_document: Mapping[str, Any]
    servers_source: str
    policy_path: Path
    host: str = "127.0.0.1"
    port: int = 8765
    credentials: Mapping[str, AgentCredential] = field(default_factory=dict)
    acts_for: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Agent -> the approvers it acts for, who may not approve its calls."""
    client_waits: Mapping[str, ClientWaits] = field(default_factory=dict)
    """Agent -> how its MCP client waits (hold budget, progress), where configured."""
    allow_anonymous: bool = False
    allowed_origins: frozenset[str] | None = None
    database_url: str = "sqlite:///broker.db"
    stdio_agent: str = "stdio"
    upstream_call_timeout: float | None = None
    policy_poll_seconds: float = 1.0
    approvers: tuple[ApproverAccount, ...] = ()
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    web: WebSettings = field(default_factory=WebSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    shutdown_grace_seconds: float = 20.0
    """On SIGTERM: held agents may still receive decisions this long, then get a 'pending' answer."""
    limits: LimitSettings = field(default_factory=LimitSettings)
    slack: SlackSettings | None = None  # None when the config has no slack block
    oauth: OAuthSettings | None = None  # None: API keys only
    demo: bool = False
    """Started with --demo: the inbox tells how to make a held call (`broker demo calls`)."""


def _parse_document(text: str, source: str) -> Any:
    try:
        if source.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        data = exc.object
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[data.rfind(b"\n", 0, exc.start) + 1 : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            f"{path}:{line}:{column}: not valid UTF-8: byte 0x{data[exc.start]:02x} ({exc.reason}); "
            "save the file as UTF-8"
        ) from None


def load_settings(path: Path, *, environ: Mapping[str, str], agent_side: bool = False) -> BrokerSettings:
    """`agent_side`: for `broker serve --stdio`, which an MCP client launches with the agent's
    environment. Only what the agent side needs is read: approvers keep their names and groups
    (for acts_for and eligibility) but no tokens, and neither the Slack block nor the web session
    secret is read; a `broker serve` on the same database runs the inbox, the API and Slack."""
    text = _read(path)
    raw = _parse_document(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping")
    try:
        config = _ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, text=text, source=str(path), model=_ConfigFile)
        ) from exc

    base = path.parent
    if isinstance(config.servers, str):
        servers_path = base / config.servers
        servers_document = _parse_document(_read(servers_path), str(servers_path))
        servers_source = str(servers_path)
    else:
        servers_document, servers_source = config.servers, f"{path}:servers"
    if not isinstance(servers_document, dict):
        raise ConfigError(f"{servers_source}: expected an object with 'mcpServers'")

    credentials: dict[str, AgentCredential] = {}
    for agent, entry in config.agents.items():
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

    approvers = []
    for name, approver in config.approvers.items():
        token_digest = None if agent_side else approver.token_sha256
        if not agent_side and token_digest is None and (approver.token or approver.token_env):
            token = approver.token or environ.get(approver.token_env or "")
            if not token:
                raise ConfigError(
                    f"{path}: approvers.{name}: environment variable {approver.token_env} is not set"
                )
            token_digest = hashlib.sha256(token.encode()).hexdigest()
        approvers.append(
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
    if clash := sorted(set(config.agents) & set(config.approvers)):
        raise ConfigError(f"{path}: {', '.join(clash)} cannot be both an agent and an approver")
    agent_keys = {credential.key_sha256: agent for agent, credential in credentials.items()}
    for account in approvers:
        if account.token_sha256 is not None and account.token_sha256 in agent_keys:
            # Otherwise the agent could approve its own calls through the decisions API.
            raise ConfigError(
                f"{path}: approvers.{account.name}: its token is the API key of agent "
                f"{agent_keys[account.token_sha256]}; agents must never be able to decide"
            )
    for agent, entry in config.agents.items():
        if unknown := sorted(set(entry.acts_for) - set(config.approvers)):
            raise ConfigError(f"{path}: agents.{agent}.acts_for: {', '.join(unknown)} is not in approvers")

    session_secret = None
    if config.web.session_secret_env and not agent_side:
        session_secret = environ.get(config.web.session_secret_env)
        if not session_secret:
            raise ConfigError(
                f"{path}: web.session_secret_env: environment variable {config.web.session_secret_env} is not set"
            )
        if len(session_secret) < 32:
            raise ConfigError(
                f"{path}: web.session_secret_env: {config.web.session_secret_env} must hold at least 32 characters"
            )
    web = WebSettings(
        enabled=config.web.enabled and not agent_side,
        session_secret=session_secret,
        trusted_header=config.web.trusted_header,
        trusted_proxies=tuple(
            ipaddress.ip_network(entry, strict=False) for entry in config.web.trusted_proxies
        ),
        cookie_secure=config.web.cookie_secure,
        sso=_sso(config.web.sso, environ, path) if config.web.sso is not None and not agent_side else None,
    )

    resolved_database_url = environ.get("BROKER_DATABASE_URL") or config.database_url or "sqlite:///broker.db"
    rate_limits = _rate_limit_settings(config.rate_limits, resolved_database_url, environ, path)

    slack = (
        _slack_settings(config.slack, environ, path) if config.slack is not None and not agent_side else None
    )

    return BrokerSettings(
        servers_document=servers_document,
        servers_source=servers_source,
        policy_path=base / config.policy,
        host=config.listen.host,
        port=config.listen.port,
        credentials=credentials,
        acts_for={
            agent: frozenset(entry.acts_for) for agent, entry in config.agents.items() if entry.acts_for
        },
        client_waits={
            agent: ClientWaits(entry.hold_budget, entry.progress_resets_timeout)
            for agent, entry in config.agents.items()
            if entry.hold_budget is not None or not entry.progress_resets_timeout
        },
        allow_anonymous=config.allow_anonymous,
        allowed_origins=frozenset(config.allowed_origins) if config.allowed_origins is not None else None,
        database_url=resolved_database_url,
        stdio_agent=config.stdio_agent,
        upstream_call_timeout=config.upstream_call_timeout,
        policy_poll_seconds=config.policy_poll_seconds,
        approvers=tuple(approvers),
        approvals=ApprovalSettings(
            hold_budget=config.approvals.hold_budget,
            progress_interval=config.approvals.progress_interval,
            check_tool=config.approvals.check_tool,
            cancel_tool=config.approvals.cancel_tool,
            default_approvers=tuple(config.approvals.default_approvers),
            sweep_interval=config.approvals.sweep_interval,
        ),
        web=web,
        rate_limits=rate_limits,
        shutdown_grace_seconds=config.shutdown_grace_seconds,
        limits=LimitSettings(
            header_timeout=config.limits.header_timeout,
            body_timeout=config.limits.body_timeout,
            max_connections_per_address=config.limits.max_connections_per_address,
        ),
        slack=slack,
        oauth=_oauth(config.oauth, environ, path),
    )


def _oauth(entry: OAuthEntry | None, environ: Mapping[str, str], path: Path) -> OAuthSettings | None:
    try:
        return oauth_settings(entry, environ)
    except MissingSecret as error:
        raise ConfigError(f"{path}: {error}") from error


def _sso(entry: SsoEntry, environ: Mapping[str, str], path: Path) -> SsoSettings:
    try:
        return sso_settings(entry, environ, path)
    except SsoConfigError as exc:
        raise ConfigError(str(exc)) from None


def _rate_limit_settings(
    entry: _RateLimits, database_url: str, environ: Mapping[str, str], path: Path
) -> RateLimitSettings:
    redis_url = environ.get("BROKER_REDIS_URL") or entry.redis_url
    if entry.backend == "redis":
        if not redis_url:
            raise ConfigError(
                f"{path}: rate_limits: backend redis needs redis_url (or BROKER_REDIS_URL), "
                "e.g. redis://127.0.0.1:6379/0"
            )
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{path}: rate_limits.redis_url: not a Redis URL: {redis_url!r}")
    elif entry.redis_url is not None:
        raise ConfigError(f"{path}: rate_limits.redis_url is only used with backend: redis")
    if entry.backend == "database":
        try:
            backend = backend_of(database_url)
        except ValueError as exc:
            raise ConfigError(f"{path}: database_url: {exc}") from exc
        if backend is not Backend.POSTGRESQL:
            raise ConfigError(
                f"{path}: rate_limits: backend database needs PostgreSQL (database_url is SQLite); "
                "use memory, or redis to share limits between processes"
            )
    return RateLimitSettings(backend=entry.backend, redis_url=redis_url if entry.backend == "redis" else None)


def _slack_secret(
    entry: _Slack, name: str, environ: Mapping[str, str], path: Path, *, required: bool
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


def _slack_settings(entry: _Slack, environ: Mapping[str, str], path: Path) -> SlackSettings:
    bot_token = _slack_secret(entry, "bot_token", environ, path, required=True)
    signing_secret = _slack_secret(entry, "signing_secret", environ, path, required=entry.mode == "http")
    app_token = _slack_secret(entry, "app_token", environ, path, required=entry.mode == "socket")
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


DEMO_PASSWORD_HASH = "scrypt$32768$8$1$8-ltD1B6Bn3_E6yBhgKCoQ$N_Tn72YPBmeke6v1u6MuUVKhTgA5GMS_PTMZG3hf21g"
"""The demo approver's password, 'demo' (see README, Web inbox); the demo listens on localhost only."""


DEMO_APPROVER_TOKEN_SHA256 = hashlib.sha256(b"demo-approver-token").hexdigest()
"""The demo approver's API token, 'demo-approver-token' (broker.demo.agent.DEMO_APPROVER_TOKEN)."""


def demo_settings(*, environ: Mapping[str, str], state_dir: Path, port: int = 8765) -> BrokerSettings:
    """Embedded defaults: the bundled demo exchange over stdio, the bundled demo policy, SQLite, localhost only."""
    demo_dir = Path(__file__).resolve().parent.parent / "demo"
    return BrokerSettings(
        servers_document={
            "mcpServers": {
                "exchange": {
                    "command": sys.executable,
                    "args": ["-m", "broker.demo.exchange"],
                    # The exchange beside this broker's code, not another installed copy
                    "env": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                }
            }
        },
        servers_source="<built-in demo>",
        policy_path=demo_dir / "policy.yaml",
        port=port,
        allow_anonymous=True,
        database_url=environ.get("BROKER_DATABASE_URL") or f"sqlite:///{state_dir / 'broker-demo.db'}",
        demo=True,
        # web inbox: demo / demo; decisions API and `broker approvals`: demo-approver-token
        approvers=(
            ApproverAccount(
                "demo", password_hash=DEMO_PASSWORD_HASH, token_sha256=DEMO_APPROVER_TOKEN_SHA256
            ),
        ),
    )
