"""The approval service over the SQL store, and the start-up check that every quorum can be met."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.clock import Clock
from broker.approvals.eligibility import unreachable_quorums
from broker.approvals.health import StoreHealth
from broker.approvals.service import ApprovalService
from broker.channels.sso.identity import possible_groups
from broker.config.errors import ConfigError
from broker.config.settings import BrokerSettings
from broker.policy import Policy
from broker.store.edits import SqlEditStore
from broker.store.escalations import SqlEscalationStore
from broker.store.sql import SqlApprovalStore
from broker.store.votes import SqlVoteStore


def check_quorums_reachable(policy: Policy, approvers: ApproverDirectory, settings: BrokerSettings) -> None:
    """Refuses to start when the configured approvers (with the groups single sign-on may vouch
    for) cannot reach a rule's quorum: its calls could never be approved."""
    unreachable = unreachable_quorums(
        policy,
        (
            (account.name, account.groups | possible_groups(account, settings.web.sso))
            for account in approvers.accounts()
        ),
        settings.approvals.default_approvers,
    )
    if unreachable:
        raise ConfigError(
            "; ".join(f"{settings.policy_path}:{line}: {problem}" for line, problem in unreachable)
        )


def approval_service_for(
    settings: BrokerSettings,
    store: SqlApprovalStore,
    *,
    health: StoreHealth,
    policy: Callable[[], Policy],
    clock: Clock,
    tool_schema: Callable[[str, str], Mapping[str, Any] | None],
) -> ApprovalService:
    return ApprovalService(
        store,
        health=health,
        replica=f"{os.uname().nodename}-{os.getpid()}-{os.urandom(2).hex()}",
        default_approvers=settings.approvals.default_approvers,
        sweep_interval=settings.approvals.sweep_interval,
        policy=policy,
        principals=settings.acts_for,
        votes=SqlVoteStore(store),
        escalations=SqlEscalationStore(store),
        clock=clock,
        edits=SqlEditStore(store),
        tool_schema=tool_schema,
    )
