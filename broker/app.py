"""The composition root: builds one running broker from its settings and wires the parts together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.clock import Clock, utc_now
from broker.approvals.eligibility import unreachable_quorums
from broker.approvals.grant_desk import GrantDesk
from broker.approvals.health import StoreHealth
from broker.approvals.ports import StoreUnavailable
from broker.approvals.service import ApprovalService
from broker.approvals.spending import SpendLedger
from broker.channels.api import build_decisions_router
from broker.channels.call_context import CallContextSource
from broker.channels.grants_api import build_grants_router
from broker.channels.sso.api_tokens import SsoApproverTokens
from broker.channels.sso.identity import possible_groups
from broker.channels.sso.provider import IdentityProvider
from broker.channels.tool_events_api import build_tool_events_router
from broker.channels.web import InboxEvents, ToolSources, WebInbox
from broker.config.errors import ConfigError
from broker.config.policy_file import PolicyFile
from broker.config.settings import BrokerSettings
from broker.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from broker.observability.metrics import BrokerMetrics
from broker.policy import Policy
from broker.policy.edits import ToolArguments, schema_properties, unknown_fields
from broker.proxy.auth.build import agent_verifier
from broker.proxy.auth.metadata import ProtectedResourceMetadata
from broker.proxy.change_feed import ChangeFeed
from broker.proxy.checks.grants import GrantCheck
from broker.proxy.checks.spend import SpendCheck
from broker.proxy.decision_log import DecisionLog, DecisionSink
from broker.proxy.gateway import Gateway
from broker.proxy.held_calls import HeldCalls
from broker.proxy.http_endpoint import McpHttpEndpoint
from broker.proxy.pinning import POLL_SECONDS as PIN_POLL_SECONDS
from broker.proxy.pinning import PinGuard
from broker.proxy.ratelimit import RateLimiter, SlidingWindowLimiter
from broker.proxy.releaser import UpstreamReleaser
from broker.proxy.sessions import SessionRegistry
from broker.proxy.upstream.pool import UpstreamPool
from broker.proxy.upstream.spec import parse_servers
from broker.store.database import Backend, backend_of
from broker.store.edits import SqlEditStore
from broker.store.engine import create_store
from broker.store.escalation_posts import SqlEscalationPostStore
from broker.store.escalations import SqlEscalationStore
from broker.store.grants import SqlGrantStore
from broker.store.migrate import head_revision, upgrade
from broker.store.notify import ReplicaFeed
from broker.store.pg_spend import PostgresSpendLedger
from broker.store.ratelimit import PostgresRateLimiter
from broker.store.seen_requests import SqlSeenRequests
from broker.store.spend import SqlSpendLedger
from broker.store.sql import SqlApprovalStore
from broker.store.tool_pins import SqlToolPinStore
from broker.store.votes import SqlVoteStore

if TYPE_CHECKING:
    from broker.channels.slack import SlackChannel

logger = logging.getLogger(__name__)


class Broker:
    """Everything one broker process owns. Construction does no I/O beyond reading the policy file."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        environ: Mapping[str, str],
        slack_sleep: Callable[[float], Awaitable[None]] = anyio.sleep,  # Slack retry backoff (tests inject)
        decision_sink: DecisionSink | None = None,
        clock: Clock = utc_now,  # approvals' deadlines and escalation steps (tests inject a manual clock)
    ) -> None:
        self.settings = settings
        self.environ = environ
        self.changes = ChangeFeed()
        self.policy_file = PolicyFile(settings.policy_path, on_change=self._policy_changed)
        servers = parse_servers(settings.servers_document, environ=environ)
        self.upstreams = UpstreamPool(servers, environ=environ, on_tools_changed=self._upstream_tools_changed)
        self.rate_limiter = rate_limiter_for(settings)
        self.decisions = DecisionLog(sink=decision_sink)
        self.gateway = Gateway(
            policy=self.policy_file.holder,
            upstreams=self.upstreams,
            rate_limiter=self.rate_limiter,
            decisions=self.decisions,
            changes=self.changes,
            call_timeout=settings.upstream_call_timeout,
        )
        self.approvers = ApproverDirectory(settings.approvers)
        unreachable = unreachable_quorums(
            self.policy_file.holder.current,
            (
                (account.name, account.groups | possible_groups(account, settings.web.sso))
                for account in self.approvers.accounts()
            ),
            settings.approvals.default_approvers,
        )
        if unreachable:
            raise ConfigError(
                "; ".join(f"{settings.policy_path}:{line}: {problem}" for line, problem in unreachable)
            )
        self.store = create_store(settings.database_url, clock=clock)
        self.store_health = StoreHealth(self.store.probe, up_interval=settings.approvals.sweep_interval)
        self.store.report_failures_to(self.store_health.failed)
        self.approvals = ApprovalService(
            self.store,
            health=self.store_health,
            replica=f"{os.uname().nodename}-{os.getpid()}-{os.urandom(2).hex()}",
            default_approvers=settings.approvals.default_approvers,
            sweep_interval=settings.approvals.sweep_interval,
            policy=lambda: self.policy_file.holder.current,
            principals=settings.acts_for,
            votes=SqlVoteStore(self.store),
            escalations=SqlEscalationStore(self.store),
            clock=clock,
            edits=SqlEditStore(self.store),
            tool_schema=self._tool_schema,
        )
        self.pin_store = SqlToolPinStore(self.store)
        self.pins = PinGuard(
            self.pin_store,
            clock=clock,
            trust_new=lambda: self.policy_file.holder.current.on_new_tool is None,
        )
        self.gateway.attach_pins(self.pins)
        self.grants = GrantDesk(SqlGrantStore(self.store))
        self.gateway.attach_grants(GrantCheck(self.grants.store))
        self.spend_ledger = spend_ledger_for(settings, self.store)
        # Calendar windows follow the broker clock, so a test can pin the hour a counter lives in.
        spend = SpendCheck(self.spend_ledger, clock=lambda: clock().timestamp())
        self.gateway.attach_spend(spend)
        self.approvals.set_releaser(
            UpstreamReleaser(
                upstreams=self.upstreams,
                policy=self.policy_file.holder,
                forward=self.gateway.forward_call,
                spend=spend,
                risks=self.gateway.tool_risks,
            )
        )
        self.gateway.attach_approvals(
            HeldCalls(
                self.approvals,
                hold_budget=settings.approvals.hold_budget,
                progress_interval=settings.approvals.progress_interval,
                check_tool_name=settings.approvals.check_tool,
                cancel_tool_name=settings.approvals.cancel_tool,
                client_waits=settings.client_waits,
            )
        )
        self.sessions = SessionRegistry(end_grace=settings.approvals.session_end_grace)
        self.mcp_endpoint = McpHttpEndpoint(
            self.gateway,
            verifier=agent_verifier(
                settings.credentials, allow_anonymous=settings.allow_anonymous, oauth=settings.oauth
            ),
            sessions=self.sessions,
            changes=self.changes,
            allowed_origins=settings.allowed_origins,
        )
        self.calls = CallContextSource(
            store=self.store,
            policy=lambda: self.policy_file.holder.current,
            tools=self.upstreams.tools,
            held_here=self.approvals.held_here,
        )
        """What surfaces show beside a held call (tool description and rating, hold condition, waiters)."""
        self.inbox_events = InboxEvents()
        self.approvals.add_listener(self.inbox_events, hears_other_replicas=True)
        self.identity_provider = (
            IdentityProvider(settings.web.sso, clock=clock) if settings.web.sso is not None else None
        )
        """The approvers' single sign-on provider (web.sso), shared by the inbox and the API."""
        self.sso_tokens = (
            SsoApproverTokens(self.identity_provider, self.approvers, clock=lambda: clock().timestamp())
            if self.identity_provider
            else None
        )
        self.web_inbox = (
            WebInbox(
                self.approvals,
                self.approvers,
                settings.web,
                events=self.inbox_events,
                tools=ToolSources(
                    decisions=self.tool_decisions,
                    tools=self.upstreams.tools,
                    servers=self.upstreams.status,
                    policy=lambda: self.policy_file.holder.current,
                ),
                policy_rejection=lambda: self.policy_file.rejection,
                demo=settings.demo,
                calls=self.calls,
                grants=self.grants,
                identity_provider=self.identity_provider,
            )
            if settings.web.enabled
            else None
        )
        self.metrics = BrokerMetrics(
            calls=self.gateway.call_counts,
            upstream_latency=self.gateway.upstream_latency,
            pending_count=self.store.pending_count,
            held_calls=lambda: self.approvals.held_calls,
        )
        self.approvals.add_listener(self.metrics)
        self.approvals.add_vote_listener(self.metrics)
        self.approvals.add_escalation_listener(self.metrics)
        self.approvals.add_edit_listener(self.metrics)
        self.approvals.add_grant_listener(self.metrics)
        self.grants.add_listener(self.metrics)
        self.replica_feed = (
            ReplicaFeed(
                settings.database_url, replica=self.approvals.replica, on_lost=self.store_health.failed
            )
            if backend_of(settings.database_url) is Backend.POSTGRESQL
            else None
        )
        if self.replica_feed is not None:
            self.approvals.add_listener(self.replica_feed)
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slack: SlackChannel | None = None
        if settings.slack is not None:
            # Imported only when configured: slack_sdk and aiohttp add a good part of a second
            # to every start of a broker that does not use Slack.
            from broker.channels.slack import SlackChannel

            self.slack = SlackChannel(
                settings.slack,
                service=self.approvals,
                directory=self.approvers,
                default_approvers=settings.approvals.default_approvers,
                seen_requests=SqlSeenRequests.on(self.store, clock=utc_now),
                calls=self.calls,
                sleep=slack_sleep,
                escalation_posts=SqlEscalationPostStore(self.store),
            )
            self.approvals.add_listener(self.slack.notifier)
            self.approvals.add_escalation_listener(self.slack.notifier)
            self.approvals.add_grant_listener(self.slack.grants)
            self.grants.add_listener(self.slack.grants)

    def _policy_changed(self, old: Policy, new: Policy) -> None:
        self.gateway.tools_changed()
        for problem in self._unknown_editable_fields():
            logger.error("%s", problem)

    async def _upstream_tools_changed(self) -> None:
        await self.pins.refresh(self.upstreams.tools())
        self.gateway.tools_changed()
        for problem in self._unknown_editable_fields():
            # The edit itself is refused whatever happens here; this tells the operator early.
            logger.error("%s", problem)

    def _unknown_editable_fields(self) -> list[str]:
        """Positioned problems for editable fields a known upstream tool does not have."""
        tools = [
            ToolArguments(tool.server, tool.name, schema_properties(tool.definition.get("inputSchema")))
            for tool in self.upstreams.tools()
        ]
        found = unknown_fields(self.policy_file.holder.current, tools)
        return [f"{self.settings.policy_path}:{line}: {problem}" for line, problem in found]

    def _tool_schema(self, server: str, name: str) -> dict[str, Any] | None:
        for tool in self.upstreams.tools():
            if tool.server == server and tool.name == name:
                schema = tool.definition.get("inputSchema")
                return schema if isinstance(schema, dict) else None
        return None

    @asynccontextmanager
    async def running(self, *, upstream_ready_timeout: float = 30.0) -> AsyncIterator[Broker]:
        async with AsyncExitStack() as stack:
            # Fail closed: without a reachable, current store no held call could be kept, so the broker does not start.
            await upgrade(self.settings.database_url)
            stack.push_async_callback(self.store.close)
            pending = await self.store.pending_count()
            logger.info("approval store ready (%d pending approvals)", pending)
            if self.slack is not None:  # entered first, so it outlives the listener calls
                await stack.enter_async_context(self.slack.running())
            await stack.enter_async_context(self.approvals.running())
            await stack.enter_async_context(self.upstreams)
            await self.upstreams.wait_ready(upstream_ready_timeout)
            await self.pins.refresh(self.upstreams.tools())
            for problem in self._unknown_editable_fields():
                # Not fatal: an upstream may change its tools later, and an edit of an argument its
                # schema lacks is refused anyway. `broker policy check --config` makes it fatal in CI.
                logger.error("%s", problem)
            for status in self.upstreams.status():
                if status.state == "connected":
                    logger.info("upstream %s: connected, %d tools", status.name, status.tool_count)
                else:
                    logger.warning("upstream %s: %s (%s)", status.name, status.state, status.last_error)
            logger.info(
                "policy %s in force (revision %s)",
                self.settings.policy_path,
                self.policy_file.holder.current.revision,
            )
            if isinstance(self.rate_limiter, AbstractAsyncContextManager):
                await stack.enter_async_context(self.rate_limiter)
            if isinstance(self.spend_ledger, AbstractAsyncContextManager):
                await stack.enter_async_context(self.spend_ledger)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(self.policy_file.watch, self.settings.policy_poll_seconds)
            tasks.start_soon(self._reap_sessions)
            tasks.start_soon(self._watch_pins)
            self._install_sighup()
            self._loop = asyncio.get_running_loop()
            if self.replica_feed is not None:
                tasks.start_soon(self.replica_feed.run, self.approvals)
            try:
                yield self
            finally:
                # A call being forwarded now finishes before the upstreams close
                with anyio.move_on_after(self.settings.shutdown_grace_seconds):
                    await self.approvals.finish_releases()
                self.mcp_endpoint.shutdown()
                self.inbox_events.close()
                tasks.cancel_scope.cancel()
                self.decisions.sink.flush()

    def drain(self) -> None:
        """The process was asked to stop (SIGTERM): readiness fails so balancers send no new work, and
        held agents may still receive decisions for `shutdown_grace_seconds`; then each gets the
        "pending approval" answer (approval id, how to come back). No approval is dropped."""
        if self.draining:
            return
        self.draining = True
        grace = self.settings.shutdown_grace_seconds
        logger.warning(
            "draining: %d held agent requests may still get decisions for %g s",
            self.approvals.held_calls,
            grace,
        )
        self.approvals.drain(grace)

    def drain_soon(self) -> None:
        """`drain`, callable from a signal handler: it runs on the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.drain)

    def _install_sighup(self) -> None:
        if not hasattr(signal, "SIGHUP"):
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.policy_file.reload)
        except (NotImplementedError, RuntimeError):
            logger.debug("SIGHUP reload unavailable in this event loop")

    async def _watch_pins(self) -> None:
        """Acceptances made elsewhere (another replica, `broker tools accept`) take effect here."""
        while True:
            await anyio.sleep(PIN_POLL_SECONDS)
            await self.refresh_pins()

    async def refresh_pins(self) -> None:
        """Re-reads which tools are pending; listings and agents hear of any change."""
        if await self.pins.refresh(self.upstreams.tools(), record=False):
            self.gateway.tools_changed()

    async def _reap_sessions(self) -> None:
        while True:
            await anyio.sleep(60)
            self.sessions.reap_idle()

    def tool_decisions(self) -> list[dict[str, Any]]:
        """Every upstream tool with what the policy in force says about it (without arguments)."""
        policy = self.policy_file.holder.current
        rows = []
        for tool in self.upstreams.tools():
            risk = self.gateway.tool_risks.of(tool) if policy.rates_risk else None
            decision = policy.decide(tool.name, server=tool.server, risk=risk)
            rows.append(
                {
                    "tool": tool.exposed_name,
                    "server": tool.server,
                    "action": decision.action.value,
                    "rule": decision.rule,
                    "reason": decision.reason,
                    "rate_limit": (
                        {"max": decision.rate_limit.max_calls, "window": decision.rate_limit.window_seconds}
                        if decision.rate_limit
                        else None
                    ),
                    "listed": policy.is_listed(tool.name, server=tool.server, risk=risk),
                }
            )
        return rows

    def build_api(self) -> FastAPI:
        broker = self

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            async with broker.running():
                yield

        api = FastAPI(title="MCP approval broker", version="0.1.0", lifespan=lifespan)

        @api.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz")
        async def readyz() -> JSONResponse:
            # Not ready while draining, while calls are refused (the same check a call makes,
            # probe included), or while the schema is not this code's
            if broker.draining:
                return JSONResponse({"status": "draining"}, status_code=503)
            health = broker.store_health
            if not health.up and not await health.recheck():
                return JSONResponse({"status": "unavailable", "store": health.reason}, status_code=503)
            try:
                current = await broker.store.schema_revision() == head_revision()
            except StoreUnavailable as exc:
                return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
            if not current:
                return JSONResponse(
                    {
                        "status": "unavailable",
                        "store": "the database schema is not at this broker's newest migration "
                        "(run 'broker db upgrade' with this version)",
                    },
                    status_code=503,
                )
            ready: dict[str, Any] = {"status": "ready"}
            if (rejection := broker.policy_file.rejection) is not None:
                # Still ready: the last good policy decides every call, but someone must fix the file
                ready["policy"] = {"rejected_reload": rejection.to_json()}
            return JSONResponse(ready)

        @api.get("/metrics")
        async def metrics() -> Response:
            return Response(await broker.metrics.render(), media_type=METRICS_CONTENT_TYPE)

        api.include_router(
            build_decisions_router(
                broker.approvals, broker.approvers, broker.calls, broker.grants, broker.sso_tokens
            )
        )
        api.include_router(build_grants_router(broker.grants, broker.approvers, broker.sso_tokens))
        api.include_router(build_tool_events_router(broker.pin_store, broker.approvers, broker.sso_tokens))
        if broker.web_inbox is not None:
            api.include_router(broker.web_inbox.router())
        slack_router = broker.slack.router() if broker.slack is not None else None
        if slack_router is not None:
            api.include_router(slack_router)

        @api.get("/api/upstreams")
        async def upstreams() -> list[dict[str, Any]]:
            return [
                {"name": s.name, "state": s.state, "last_error": s.last_error, "tools": s.tool_count}
                for s in broker.upstreams.status()
            ]

        @api.get("/api/tools")
        async def tools() -> JSONResponse:
            return JSONResponse(
                {
                    "policy_revision": broker.policy_file.holder.current.revision,
                    "tools": broker.tool_decisions(),
                }
            )

        return api

    def asgi(self) -> ASGIApp:
        metadata = ProtectedResourceMetadata(self.settings.oauth) if self.settings.oauth else None
        return BrokerASGI(self.mcp_endpoint, self.build_api(), metadata)


class BrokerASGI:
    """Sends `/mcp` straight to the MCP endpoint so the hot path skips the web framework's routing."""

    def __init__(self, mcp: ASGIApp, api: ASGIApp, metadata: ProtectedResourceMetadata | None = None) -> None:
        self._mcp = mcp
        self._api = api
        self._metadata = metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ("/mcp", "/mcp/"):
            await self._mcp(scope, receive, send)
        elif self._metadata is not None and scope["type"] == "http" and scope["path"] in self._metadata.paths:
            await self._metadata(scope, receive, send)
        else:
            await self._api(scope, receive, send)


def current_environ() -> dict[str, str]:
    return dict(os.environ)


def rate_limiter_for(settings: BrokerSettings) -> RateLimiter:
    """Where rate-limit counters live. By default in memory on SQLite (one process) and in the
    database on PostgreSQL, so that an agent cannot multiply its quota by calling several replicas."""
    backend = settings.rate_limits.backend
    on_postgres = backend_of(settings.database_url) is Backend.POSTGRESQL
    if backend is None:
        backend = "database" if on_postgres else "memory"
    if backend == "database":
        if not on_postgres:
            raise ValueError("rate_limits backend 'database' needs a PostgreSQL database_url")
        return PostgresRateLimiter(settings.database_url)
    if backend == "redis":
        if not settings.rate_limits.redis_url:
            raise ValueError("rate_limits backend 'redis' needs a redis_url")
        # Imported here: only deployments that chose Redis pay for loading its client.
        from broker.store.redis_ratelimit import RedisRateLimiter

        return RedisRateLimiter(settings.rate_limits.redis_url)
    return SlidingWindowLimiter()


def spend_ledger_for(settings: BrokerSettings, store: SqlApprovalStore) -> SpendLedger:
    """Where spend-limit counters live: in Redis when rate limits are shared through Redis, else in
    the approval store's database (shared by every replica on PostgreSQL, through the one-round-trip
    asyncpg ledger)."""
    if settings.rate_limits.backend == "redis" and settings.rate_limits.redis_url:
        from broker.store.redis_spend import RedisSpendLedger

        return RedisSpendLedger(settings.rate_limits.redis_url)
    if backend_of(settings.database_url) is Backend.POSTGRESQL:
        return PostgresSpendLedger(settings.database_url, durable=settings.spend.durable)
    return SqlSpendLedger(store)
