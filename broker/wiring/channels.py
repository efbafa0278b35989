"""The human-facing side, each part only when configured: single sign-on, the web inbox and Slack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.clock import Clock, utc_now
from broker.approvals.grant_desk import GrantDesk
from broker.approvals.service import ApprovalService
from broker.channels.call_context import CallContextSource
from broker.channels.sso.api_tokens import SsoApproverTokens
from broker.channels.sso.provider import IdentityProvider
from broker.channels.web import InboxEvents, ToolSources, WebInbox
from broker.config.policy_file import PolicyFile
from broker.config.settings import BrokerSettings
from broker.proxy.upstream.pool import UpstreamPool
from broker.store.escalation_posts import SqlEscalationPostStore
from broker.store.seen_requests import SqlSeenRequests
from broker.store.sql import SqlApprovalStore

if TYPE_CHECKING:
    from broker.channels.slack import SlackChannel


def identity_provider_for(settings: BrokerSettings, *, clock: Clock) -> IdentityProvider | None:
    return IdentityProvider(settings.web.sso, clock=clock) if settings.web.sso is not None else None


def sso_tokens_for(
    provider: IdentityProvider | None, approvers: ApproverDirectory, *, clock: Clock
) -> SsoApproverTokens | None:
    """Lets the API take the provider's tokens as an approver's, beside the configured API tokens."""
    if not provider:
        return None
    return SsoApproverTokens(provider, approvers, clock=lambda: clock().timestamp())


def web_inbox_for(
    settings: BrokerSettings,
    *,
    approvals: ApprovalService,
    approvers: ApproverDirectory,
    events: InboxEvents,
    calls: CallContextSource,
    grants: GrantDesk,
    identity_provider: IdentityProvider | None,
    policy_file: PolicyFile,
    upstreams: UpstreamPool,
    tool_decisions: Callable[[], list[dict[str, Any]]],
) -> WebInbox | None:
    if not settings.web.enabled:
        return None
    return WebInbox(
        approvals,
        approvers,
        settings.web,
        events=events,
        tools=ToolSources(
            decisions=tool_decisions,
            tools=upstreams.tools,
            servers=upstreams.status,
            policy=lambda: policy_file.holder.current,
        ),
        policy_rejection=lambda: policy_file.rejection,
        demo=settings.demo,
        calls=calls,
        grants=grants,
        identity_provider=identity_provider,
    )


def slack_channel_for(
    settings: BrokerSettings,
    *,
    approvals: ApprovalService,
    approvers: ApproverDirectory,
    grants: GrantDesk,
    store: SqlApprovalStore,
    calls: CallContextSource,
    sleep: Callable[[float], Awaitable[None]],
) -> SlackChannel | None:
    """The Slack channel, listening to approvals, escalations and grants, when `slack` is configured."""
    if settings.slack is None:
        return None
    # Imported only when configured: slack_sdk and aiohttp add a good part of a second
    # to every start of a broker that does not use Slack.
    from broker.channels.slack import SlackChannel

    slack = SlackChannel(
        settings.slack,
        service=approvals,
        directory=approvers,
        default_approvers=settings.approvals.default_approvers,
        seen_requests=SqlSeenRequests.on(store, clock=utc_now),
        calls=calls,
        sleep=sleep,
        escalation_posts=SqlEscalationPostStore(store),
    )
    approvals.add_listener(slack.notifier)
    approvals.add_escalation_listener(slack.notifier)
    approvals.add_grant_listener(slack.grants)
    grants.add_listener(slack.grants)
    return slack
