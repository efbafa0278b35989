"""The composition root: builds one running broker from its settings and wires the parts together.

The builders it calls live in `broker/wiring/`, one module per domain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.clock import Clock, utc_now
from broker.approvals.grant_desk import GrantDesk
from broker.approvals.health import StoreHealth
from broker.catalogue.retention import EventRetention
from broker.channels.api import build_decisions_router
from broker.channels.call_context import CallContextSource
from broker.channels.grants_api import build_grants_router
from broker.channels.tool_events_api import build_tool_events_router
from broker.channels.web import InboxEvents
from broker.config.policy_file import PolicyFile
from broker.config.settings import BrokerSettings
from broker.observability.metrics import BrokerMetrics
from broker.policy import Policy
from broker.proxy.auth.metadata import ProtectedResourceMetadata
from broker.proxy.change_feed import ChangeFeed
from broker.proxy.decision_log import DecisionLog, DecisionSink
from broker.proxy.gateway import Gateway
from broker.proxy.pinning import POLL_SECONDS as PIN_POLL_SECONDS
from broker.proxy.pinning import PinGuard
from broker.proxy.sessions import SessionRegistry
from broker.proxy.upstream.pool import UpstreamPool
from broker.proxy.upstream.spec import parse_servers
from broker.store.engine import create_store
from broker.store.grants import SqlGrantStore
from broker.store.migrate import upgrade
from broker.store.tool_pins import SqlToolPinStore
from broker.wiring import tools as tool_views
from broker.wiring.approvals import approval_service_for, check_quorums_reachable
from broker.wiring.channels import identity_provider_for, slack_channel_for, sso_tokens_for, web_inbox_for
from broker.wiring.http_api import BrokerASGI, add_health_routes, add_status_routes
from broker.wiring.proxy import arm_gateway, mcp_endpoint_for
from broker.wiring.store import rate_limiter_for, replica_feed_for, spend_ledger_for

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
        check_quorums_reachable(self.policy_file.holder.current, self.approvers, settings)
        self.store = create_store(settings.database_url, clock=clock)
        self.store_health = StoreHealth(self.store.probe, up_interval=settings.approvals.sweep_interval)
        self.store.report_failures_to(self.store_health.failed)
        self.approvals = approval_service_for(
            settings,
            self.store,
            health=self.store_health,
            policy=lambda: self.policy_file.holder.current,
            clock=clock,
            tool_schema=self._tool_schema,
        )
        self.pin_store = SqlToolPinStore(self.store)
        if settings.tool_events.retention is not None:
            self.approvals.add_sweep_step(EventRetention(self.pin_store, keep=settings.tool_events.retention))
        self.pins = PinGuard(
            self.pin_store,
            clock=clock,
            trust_new=lambda: self.policy_file.holder.current.on_new_tool is None,
        )
        self.grants = GrantDesk(SqlGrantStore(self.store))
        self.spend_ledger = spend_ledger_for(settings, self.store)
        arm_gateway(
            self.gateway,
            settings=settings,
            policy=self.policy_file.holder,
            upstreams=self.upstreams,
            approvals=self.approvals,
            pins=self.pins,
            grants=self.grants,
            spend_ledger=self.spend_ledger,
            clock=clock,
        )
        self.sessions = SessionRegistry(end_grace=settings.approvals.session_end_grace)
        self.mcp_endpoint = mcp_endpoint_for(
            self.gateway, settings, sessions=self.sessions, changes=self.changes
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
        self.identity_provider = identity_provider_for(settings, clock=clock)
        """The approvers' single sign-on provider (web.sso), shared by the inbox and the API."""
        self.sso_tokens = sso_tokens_for(self.identity_provider, self.approvers, clock=clock)
        self.web_inbox = web_inbox_for(
            settings,
            approvals=self.approvals,
            approvers=self.approvers,
            events=self.inbox_events,
            calls=self.calls,
            grants=self.grants,
            identity_provider=self.identity_provider,
            policy_file=self.policy_file,
            upstreams=self.upstreams,
            tool_decisions=self.tool_decisions,
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
        self.replica_feed = replica_feed_for(
            settings, replica=self.approvals.replica, on_lost=self.store_health.failed
        )
        if self.replica_feed is not None:
            self.approvals.add_listener(self.replica_feed)
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slack: SlackChannel | None = slack_channel_for(
            settings,
            approvals=self.approvals,
            approvers=self.approvers,
            grants=self.grants,
            store=self.store,
            calls=self.calls,
            sleep=slack_sleep,
        )

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
        return tool_views.unknown_editable_fields(
            self.policy_file.holder.current, self.upstreams.tools(), self.settings.policy_path
        )

    def _tool_schema(self, server: str, name: str) -> dict[str, Any] | None:
        return tool_views.tool_schema(self.upstreams.tools(), server, name)

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
        return tool_views.tool_decisions(
            self.policy_file.holder.current, self.upstreams.tools(), self.gateway.tool_risks
        )

    def build_api(self) -> FastAPI:
        broker = self

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            async with broker.running():
                yield

        api = FastAPI(title="MCP approval broker", version="0.1.0", lifespan=lifespan)

        add_health_routes(
            api,
            draining=lambda: broker.draining,
            health=broker.store_health,
            store=broker.store,
            policy_file=broker.policy_file,
            broker_metrics=broker.metrics,
        )
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

        add_status_routes(
            api, pool=broker.upstreams, policy_file=broker.policy_file, tool_decisions=broker.tool_decisions
        )

        return api

    def asgi(self) -> ASGIApp:
        metadata = ProtectedResourceMetadata(self.settings.oauth) if self.settings.oauth else None
        return BrokerASGI(self.mcp_endpoint, self.build_api(), metadata)
