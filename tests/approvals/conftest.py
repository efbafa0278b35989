"""Fixtures for ApprovalService tests: real stores on SQLite and PostgreSQL, a settable clock, and
stand-ins for the two things outside the service (the upstream that receives a released call, and
the channels that show approvals to people)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import pytest

from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.service import ApprovalService
from broker.policy import Policy
from broker.store.edits import SqlEditStore
from broker.store.escalations import SqlEscalationStore
from broker.store.sql import SqlApprovalStore
from broker.store.votes import SqlVoteStore
from tests.store.conftest import ManualClock

# The store's contract fixtures: a fresh database per backend (PostgreSQL marked `postgres`),
# migrated, a ManualClock and ordered ids. Re-exported so pytest registers them for this directory.
from tests.store.conftest import clock as clock
from tests.store.conftest import database_url as database_url
from tests.store.conftest import ids as ids
from tests.store.conftest import migrated_url as migrated_url
from tests.store.conftest import open_store as open_store

ORDER_RESULT: dict[str, Any] = {
    "content": [{"type": "text", "text": '{"order_id": "ord-1001", "status": "open"}'}],
    "structuredContent": {"order_id": "ord-1001", "status": "open"},
    "isError": False,
}


@dataclass
class CountingReleaser:
    """Stands in for the upstream: records every call it is handed, so a test can count deliveries."""

    result: dict[str, Any] = field(default_factory=lambda: dict(ORDER_RESULT))
    failure: BaseException | None = None
    calls: list[Approval] = field(default_factory=list)
    upstream_connected: bool = True
    hang: anyio.Event | None = None
    """When set, a release waits on it (an upstream that does not answer)."""

    def can_release(self, approval: Approval) -> bool:
        return self.upstream_connected

    async def release(self, approval: Approval) -> dict[str, Any]:
        self.calls.append(approval)
        if self.hang is not None:
            await self.hang.wait()
        if self.failure is not None:
            raise self.failure
        return self.result

    def calls_for(self, approval_id: str) -> int:
        return sum(1 for call in self.calls if call.id == approval_id)


@dataclass
class RecordingListener:
    """A channel that remembers what it was told; tests wait on it instead of sleeping."""

    opened: list[Approval] = field(default_factory=list)
    updated: list[Approval] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def approval_opened(self, approval: Approval) -> None:
        self.opened.append(approval)
        self._notify()

    async def approval_updated(self, approval: Approval) -> None:
        self.updated.append(approval)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def updates(self, approval_id: str, status: ApprovalStatus) -> list[Approval]:
        return [a for a in self.updated if a.id == approval_id and a.status is status]

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not condition():
                await self._changed.wait()


ServiceFactory = Callable[..., AbstractAsyncContextManager[ApprovalService]]

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
"""For service logic that no database behaviour can change; creating a PostgreSQL database per test
is the slowest part of this suite, so it is spent where the backend matters (races, restarts, queries)."""


@pytest.fixture
def releaser() -> CountingReleaser:
    return CountingReleaser()


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()


@pytest.fixture
def service(
    open_store: Callable[[], SqlApprovalStore],
    clock: ManualClock,
    releaser: CountingReleaser,
    listener: RecordingListener,
) -> ServiceFactory:
    """`async with service("replica-a") as a:` runs one ApprovalService on its own store (own engine
    and connection pool, like a broker replica) without the background sweeper loop, so each test
    calls `sweep()` when it wants one. Leaving the block closes that store, like a process exiting."""

    @asynccontextmanager
    async def run(
        replica: str = "replica-a",
        *,
        service_clock: Callable[[], Any] | None = None,
        stale_release_after: timedelta = timedelta(minutes=15),
        default_approvers: tuple[str, ...] = ("*",),
        store: SqlApprovalStore | None = None,
        policy: Callable[[], Policy] | None = None,
        principals: dict[str, frozenset[str]] | None = None,
    ) -> AsyncIterator[ApprovalService]:
        own_store = store if store is not None else open_store()
        approvals = ApprovalService(
            own_store,
            replica=replica,
            clock=service_clock if service_clock is not None else clock,
            default_approvers=default_approvers,
            stale_release_after=stale_release_after,
            policy=policy,
            principals=principals,
            votes=SqlVoteStore(own_store),
            escalations=SqlEscalationStore(own_store),
            edits=SqlEditStore(own_store),
        )
        approvals.set_releaser(releaser)
        approvals.add_listener(listener)
        try:
            async with approvals.running(sweep=False):
                yield approvals
        finally:
            await own_store.close()

    return run
