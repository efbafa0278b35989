"""A call a grant let through that is still tracked as an approval (its task is served from it):
no reader of the shared store (a Slack reconciler, another replica, the inbox or an approver) may
ever find it pending, and it is released exactly once."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest

from broker.approvals.audit import AuditEvent
from broker.approvals.grants import Grant, GrantScope
from broker.approvals.model import Approval, ApprovalStatus, NewApproval
from broker.store.database import build_engine
from broker.store.sql import SqlApprovalStore
from tests.store.builders import new_approval
from tests.store.conftest import ManualClock, SequentialIds

from .conftest import CountingReleaser, RecordingListener, ServiceFactory

pytestmark = pytest.mark.anyio

S = ApprovalStatus


class PendingWatch(SqlApprovalStore):
    """The real store, reading the pending list back after each write that makes an approval, as
    any other replica could read it at that moment."""

    seen_pending: builtins.list[builtins.list[str]]

    async def _look(self, approval: Approval) -> Approval:
        self.seen_pending.append([pending.id for pending in await self.list(statuses={S.PENDING})])
        return approval

    async def create(self, new: NewApproval, *, audit: AuditEvent) -> Approval:
        return await self._look(await super().create(new, audit=audit))

    async def create_decided(
        self, new: NewApproval, *, to: ApprovalStatus, changes: Any = None, audit: Sequence[AuditEvent]
    ) -> Approval:
        return await self._look(await super().create_decided(new, to=to, changes=changes or {}, audit=audit))


def a_grant(clock: ManualClock) -> Grant:
    return Grant(
        id="g-apv-0",
        approval_id="apv-0",
        agent="agent-1",
        server="payments",
        tool="refund",
        rule="rules[0] 'payments__*'",
        policy_revision="rev-1",
        scope=GrantScope.MATCHING,
        arguments_hash="0" * 64,
        created_by=("alice",),
        created_at=clock.now,
        expires_at=clock.now + timedelta(minutes=30),
        max_calls=10,
    )


async def test_a_granted_call_is_never_pending_and_is_released_once(
    service: ServiceFactory,
    migrated_url: str,
    clock: ManualClock,
    ids: SequentialIds,
    releaser: CountingReleaser,
    listener: RecordingListener,
) -> None:
    watched = PendingWatch(build_engine(migrated_url), clock=clock, id_factory=ids)
    watched.seen_pending = []
    async with service("replica-a", store=watched) as a, service("replica-b") as b:
        granted = await a.open_granted(new_approval(task_id="task-1"), a_grant(clock))

        assert granted.status is S.APPROVED
        assert (granted.decided_by, granted.decided_via) == ("grant g-apv-0", "grant")
        assert watched.seen_pending and all(seen == [] for seen in watched.seen_pending)
        await listener.until(lambda: bool(listener.updates(granted.id, S.COMPLETED)))
        with anyio.fail_after(10):
            served = await b.wait(granted.id, timeout=5)
        assert served.status is S.COMPLETED and served.task_id == "task-1"
        assert await b.store.list(statuses={S.PENDING}) == []
        trail = [record.event for record in await b.store.audit_trail(granted.id)]
        assert trail[:2] == ["requested", "approved"]
        assert (await b.store.verify_audit_chain()).ok
    assert releaser.calls_for(granted.id) == 1
    assert [approval.id for approval in listener.opened] == []  # no channel was asked to show a prompt
