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
spend: {durable: false}                           # true: the PostgreSQL spend ledger waits for the WAL flush
tool_events: {retention_days: 90}                 # pinned tool definition events; 0 or null: forever
shutdown_grace_seconds: 20                        # on SIGTERM, how long held agents may still get decisions
limits: {header_timeout: 10, body_timeout: 30, max_connections_per_address: 256}   # the defaults
```
Relative paths are resolved against the configuration file's directory.

Larger sections are read by modules of their own (accounts, web, sso, slack, oauth,
rate_limits, spend, tool_events); every problem is raised as `broker.config.errors.ConfigError`,
whose message says where.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.approvals.approvers import ApproverAccount
from broker.config.accounts import (
    AgentEntry,
    ApproverEntry,
    agent_credentials,
    approver_accounts,
    check_accounts,
)
from broker.config.errors import ConfigError
from broker.config.oauth import MissingSecret, OAuthEntry, OAuthSettings, oauth_settings
from broker.config.positions import describe_validation_error
from broker.config.rate_limits import RateLimitsEntry, RateLimitSettings, rate_limit_settings
from broker.config.slack import SlackEntry, SlackSettings, slack_settings
from broker.config.spend import SpendEntry, SpendSettings, spend_settings
from broker.config.tool_events import ToolEventsEntry, ToolEventSettings, tool_event_settings
from broker.config.web import WebEntry, WebSettings, web_settings
from broker.proxy.auth.api_keys import AgentCredential
from broker.proxy.waiting import DEFAULT_END_GRACE, DEFAULT_HOLD_BUDGET, ClientWaits


class _Approvals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hold_budget: float = Field(default=DEFAULT_HOLD_BUDGET, gt=0)
    progress_interval: float = Field(default=5.0, gt=0)
    check_tool: str = Field(default="check_approval", min_length=1)
    cancel_tool: str = Field(default="cancel_approval", min_length=1)
    default_approvers: list[str] = ["*"]
    sweep_interval: float = Field(default=1.0, gt=0)
    # Above a few seconds an agent that really ended its session keeps its approvals open for
    # nothing; 30 s bounds the mistake.
    session_end_grace: float = Field(default=DEFAULT_END_GRACE, gt=0, le=30, allow_inf_nan=False)


class _Listen(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    max_connections_per_address: int = Field(default=256, ge=1, le=1_000_000)


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    servers: str | dict[str, Any]
    policy: str
    listen: _Listen = _Listen()
    agents: dict[str, AgentEntry] = {}
    allow_anonymous: bool = False
    allowed_origins: list[str] | None = None
    database_url: str | None = None
    stdio_agent: str = "stdio"
    upstream_call_timeout: float | None = Field(default=None, gt=0)
    policy_poll_seconds: float = Field(default=1.0, gt=0)
    approvers: dict[str, ApproverEntry] = {}
    approvals: _Approvals = _Approvals()
    web: WebEntry = WebEntry()
    rate_limits: RateLimitsEntry = RateLimitsEntry()
    spend: SpendEntry = SpendEntry()
    tool_events: ToolEventsEntry = ToolEventsEntry()
    shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=3600)
    limits: _Limits = _Limits()
    slack: SlackEntry | None = None
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
class LimitSettings:
    """What every HTTP connection is held to; see broker/net/limits.py."""

    header_timeout: float = 10.0
    """Seconds a request head may take, from the connection's opening or the request's first byte."""
    body_timeout: float = 30.0
    """Seconds a request body may take after its head."""
    max_connections_per_address: int = 256
    """Connections open at once from one client address (web.trusted_proxies are not capped)."""


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
    spend: SpendSettings = field(default_factory=SpendSettings)
    tool_events: ToolEventSettings = field(default_factory=ToolEventSettings)
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

    credentials = agent_credentials(config.agents, environ, path)
    approvers = approver_accounts(config.approvers, environ, path, agent_side=agent_side)
    check_accounts(config.agents, credentials, config.approvers, approvers, path)

    web = web_settings(config.web, environ, path, agent_side=agent_side)

    resolved_database_url = environ.get("BROKER_DATABASE_URL") or config.database_url or "sqlite:///broker.db"
    rate_limits = rate_limit_settings(config.rate_limits, resolved_database_url, environ, path)

    slack = (
        slack_settings(config.slack, environ, path) if config.slack is not None and not agent_side else None
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
            session_end_grace=config.approvals.session_end_grace,
        ),
        web=web,
        rate_limits=rate_limits,
        spend=spend_settings(config.spend, rate_limits, path),
        tool_events=tool_event_settings(config.tool_events),
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
