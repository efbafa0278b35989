"""The agent-facing side: what a call passes through in the gateway, and the MCP endpoint with its verifier."""

from __future__ import annotations

from broker.approvals.clock import Clock
from broker.approvals.grant_desk import GrantDesk
from broker.approvals.service import ApprovalService
from broker.approvals.spending import SpendLedger
from broker.config.settings import BrokerSettings
from broker.policy.holder import PolicyHolder
from broker.proxy.auth.build import agent_verifier
from broker.proxy.change_feed import ChangeFeed
from broker.proxy.checks.grants import GrantCheck
from broker.proxy.checks.spend import SpendCheck
from broker.proxy.gateway import Gateway
from broker.proxy.held_calls import HeldCalls
from broker.proxy.http_endpoint import McpHttpEndpoint
from broker.proxy.pinning import PinGuard
from broker.proxy.releaser import UpstreamReleaser
from broker.proxy.sessions import SessionRegistry
from broker.proxy.upstream.pool import UpstreamPool


def arm_gateway(
    gateway: Gateway,
    *,
    settings: BrokerSettings,
    policy: PolicyHolder,
    upstreams: UpstreamPool,
    approvals: ApprovalService,
    pins: PinGuard,
    grants: GrantDesk,
    spend_ledger: SpendLedger,
    clock: Clock,
) -> None:
    """Attaches what a call meets beyond the policy (pins, grants, spend, the hold for approval),
    and lets the approval service release an approved call through the same gateway."""
    gateway.attach_pins(pins)
    gateway.attach_grants(GrantCheck(grants.store))
    # Calendar windows follow the broker clock, so a test can pin the hour a counter lives in.
    spend = SpendCheck(spend_ledger, clock=lambda: clock().timestamp())
    gateway.attach_spend(spend)
    approvals.set_releaser(
        UpstreamReleaser(
            upstreams=upstreams,
            policy=policy,
            forward=gateway.forward_call,
            spend=spend,
            risks=gateway.tool_risks,
        )
    )
    gateway.attach_approvals(
        HeldCalls(
            approvals,
            hold_budget=settings.approvals.hold_budget,
            progress_interval=settings.approvals.progress_interval,
            check_tool_name=settings.approvals.check_tool,
            cancel_tool_name=settings.approvals.cancel_tool,
            client_waits=settings.client_waits,
        )
    )


def mcp_endpoint_for(
    gateway: Gateway, settings: BrokerSettings, *, sessions: SessionRegistry, changes: ChangeFeed
) -> McpHttpEndpoint:
    return McpHttpEndpoint(
        gateway,
        verifier=agent_verifier(
            settings.credentials, allow_anonymous=settings.allow_anonymous, oauth=settings.oauth
        ),
        sessions=sessions,
        changes=changes,
        allowed_origins=settings.allowed_origins,
    )
