"""The Slack channel assembled from its settings: the listener that posts, the handler that decides,
and the transport (HTTP request URL or Socket Mode) that feeds the handler."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

import anyio
from fastapi import APIRouter

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.call_view import CallContexts
from broker.approvals.clock import Clock, utc_now
from broker.approvals.escalation_posts import EscalationPostStore
from broker.approvals.ports import SeenRequests
from broker.approvals.service import ApprovalService
from broker.channels.delivery.retry import DEFAULT_RETRY_SCHEDULE, RetrySchedule, Sleep
from broker.channels.slack.client import SlackApi
from broker.channels.slack.endpoint import build_slack_router
from broker.channels.slack.grants import SlackGrantAnnouncer
from broker.channels.slack.interactions import InteractionHandler
from broker.channels.slack.notifier import SlackNotifier
from broker.channels.slack.people import SlackPeople, UserGroupMembers
from broker.channels.slack.signing import RequestVerifier
from broker.channels.slack.socket_mode import socket_mode_connection
from broker.config.slack import SlackSettings


class SlackChannel:
    def __init__(
        self,
        settings: SlackSettings,
        *,
        service: ApprovalService,
        directory: ApproverDirectory,
        default_approvers: Sequence[str],
        seen_requests: SeenRequests,
        sleep: Sleep = anyio.sleep,
        schedule: RetrySchedule = DEFAULT_RETRY_SCHEDULE,
        clock: Clock = utc_now,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        reconcile_interval: float = 30.0,
        reconcile_sleep: Sleep = anyio.sleep,
        look_back: timedelta = timedelta(days=7),
        claim_lease: timedelta = timedelta(minutes=2),
        calls: CallContexts | None = None,
        escalation_posts: EscalationPostStore | None = None,
    ) -> None:
        if settings.mode == "socket" and not settings.app_token:
            raise ValueError("Slack Socket Mode needs an app-level token")
        self.settings = settings
        self.api = SlackApi(settings.bot_token, base_url=settings.base_url)
        self.people = SlackPeople(
            directory,
            UserGroupMembers(self.api, ttl=settings.group_cache_seconds, monotonic=monotonic),
            may_decide=service.may_decide,
            default_approvers=default_approvers,
            user_groups=settings.user_groups,
        )
        self.notifier = SlackNotifier(
            service.store,
            self.api,
            people=self.people,
            default_channel=settings.default_channel,
            schedule=schedule,
            sleep=sleep,
            clock=clock,
            reconcile_interval=reconcile_interval,
            reconcile_sleep=reconcile_sleep,
            look_back=look_back,
            claim_lease=claim_lease,
            calls=calls,
            grants=service.grant_allowance,
            escalation_posts=escalation_posts,
        )
        """Register with `ApprovalService.add_listener`."""
        self.grants = SlackGrantAnnouncer(service.store, self.api)
        """Register with `ApprovalService.add_grant_listener` and `GrantDesk.add_listener`."""
        self.interactions = InteractionHandler(service, self.api, self.people, clock=clock)
        self._seen_requests = seen_requests
        """Signed requests already accepted, shared by the replicas: a replay is refused."""
        self._verifier = (
            RequestVerifier(settings.signing_secret, wall_clock=wall_clock)
            if settings.signing_secret
            else None
        )

    def router(self) -> APIRouter | None:
        """``POST /slack/interactions``; None without a signing secret (nothing could be verified)."""
        if self._verifier is None:
            return None
        return build_slack_router(self._verifier, self.interactions, self._seen_requests)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SlackChannel]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.api.connected())
            await stack.enter_async_context(self.notifier.running())
            await stack.enter_async_context(self.grants.running())
            await stack.enter_async_context(self.interactions.running())
            if self.settings.mode == "socket" and self.settings.app_token:
                await stack.enter_async_context(
                    socket_mode_connection(self.settings.app_token, self.api.web_client, self.interactions)
                )
            yield self
