"""Failing closed: when the database is unreachable, locked or unmigrated, callers get StoreUnavailable."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from broker.approvals.audit import AuditEvent
from broker.approvals.ports import StoreUnavailable
from broker.store.database import build_engine, writing
from broker.store.engine import create_store
from broker.store.migrate import current_revision, upgrade
from broker.store.sql import SqlApprovalStore

from .builders import S, entering, new_approval, requested
from .conftest import ManualClock, SequentialIds

pytestmark = pytest.mark.anyio

CLOSED_PORT_URL = "postgresql://postgres@127.0.0.1:1/test"


def every_store_operation(store: SqlApprovalStore, clock: ManualClock) -> list[Callable[[], Awaitable[Any]]]:
    return [
        lambda: store.create(new_approval(), audit=requested()),
        lambda: store.get("apv-000001"),
        lambda: store.get_by_task("task-1"),
        lambda: store.find_or_create(new_approval(), audit=requested()),
        lambda: store.list(),
        lambda: store.transition(
            "apv-000001", expected={S.PENDING}, to=S.APPROVED, audit=entering(S.APPROVED)
        ),
        lambda: store.update_fields("apv-000001", {"slack_ts": "1.1"}),
        lambda: store.mark_delivered("apv-000001", clock.now),
        lambda: store.due_for_expiry(clock.now),
        lambda: store.pending_count(),
        lambda: store.append_audit(AuditEvent("notified", "slack", approval_id="apv-000001")),
        lambda: store.audit_trail("apv-000001"),
        lambda: store.verify_audit_chain(),
    ]


async def assert_all_unavailable(store: SqlApprovalStore, clock: ManualClock) -> None:
    for operation in every_store_operation(store, clock):
        with anyio.fail_after(10), pytest.raises(StoreUnavailable):
            await operation()


async def test_unreachable_postgres(clock: ManualClock, ids: SequentialIds) -> None:
    async with create_store(CLOSED_PORT_URL, clock=clock, id_factory=ids) as store:
        await assert_all_unavailable(store, clock)
        with pytest.raises(StoreUnavailable):
            await store.schema_revision()  # what /readyz asks
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await upgrade(CLOSED_PORT_URL)
    with pytest.raises(StoreUnavailable):
        await current_revision(CLOSED_PORT_URL)


async def test_unopenable_sqlite_file(tmp_path: Path, clock: ManualClock, ids: SequentialIds) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-directory' / 'approvals.db'}"
    threads_before = set(threading.enumerate())

    async with create_store(url, clock=clock, id_factory=ids) as store:
        await assert_all_unavailable(store, clock)
    with pytest.raises(StoreUnavailable):
        await upgrade(url)

    # aiosqlite stops the worker thread of a failed connect without waiting for it; let those
    # threads finish while this test's event loop still runs, or they report to a closed one.
    for thread in set(threading.enumerate()) - threads_before:
        await anyio.to_thread.run_sync(thread.join, 10)


async def test_unmigrated_database(database_url: str, clock: ManualClock, ids: SequentialIds) -> None:
    async with create_store(database_url, clock=clock, id_factory=ids) as store:
        await assert_all_unavailable(store, clock)


async def test_sqlite_write_lock_held_too_long(
    tmp_path: Path, clock: ManualClock, ids: SequentialIds
) -> None:
    url = f"sqlite:///{tmp_path / 'approvals.db'}"
    await upgrade(url)
    other_process = build_engine(url)
    try:
        async with writing(other_process).begin() as blocker:
            await blocker.execute(text("SELECT 1"))
            async with create_store(url, clock=clock, id_factory=ids, db_timeout=0.05) as store:
                with anyio.fail_after(10), pytest.raises(StoreUnavailable, match="locked"):
                    await store.create(new_approval(), audit=requested())
                assert await store.pending_count() == 0  # readers are not blocked by the writer
    finally:
        await other_process.dispose()


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_postgres_statement_stuck_on_a_lock_fails_closed(
    migrated_url: str, clock: ManualClock, ids: SequentialIds
) -> None:
    async with create_store(migrated_url, clock=clock, id_factory=ids) as store:
        approval = await store.create(new_approval(), audit=requested())
        stuck = create_store(migrated_url, clock=clock, id_factory=ids, statement_timeout=0.1)
        other_process = build_engine(migrated_url)
        try:
            async with other_process.begin() as blocker:
                await blocker.execute(text("SELECT id FROM approvals FOR UPDATE"))
                with anyio.fail_after(10), pytest.raises(StoreUnavailable):
                    await stuck.transition(
                        approval.id, expected={S.PENDING}, to=S.APPROVED, audit=entering(S.APPROVED)
                    )
            # The lock is gone and the same store carries on.
            approved = await stuck.transition(
                approval.id, expected={S.PENDING}, to=S.APPROVED, audit=entering(S.APPROVED)
            )
            assert approved.version == 2
            assert (await store.verify_audit_chain()).rows_checked == 2
        finally:
            await stuck.close()
            await other_process.dispose()
