"""Callers get cancelled (agents disconnect, requests time out): the store must stay consistent and usable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.store.database import DEFAULT_TIMEOUT, Backend, backend_of, build_engine
from broker.store.engine import create_store
from broker.store.sql import SqlApprovalStore

from .builders import S, create, entering
from .conftest import ManualClock, SequentialIds

pytestmark = pytest.mark.anyio

# Points inside a transition where the caller gets cancelled: the start of the transaction
# (BEGIN IMMEDIATE on SQLite, the first statement on PostgreSQL), each statement, and COMMIT.
STEPS = ["begin", "UPDATE APPROVALS", "SELECT AUDIT_EVENTS.SEQ", "INSERT INTO AUDIT_EVENTS", "commit"]


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(migrated_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def signal_on(engine: AsyncEngine, step: str) -> anyio.Event:
    """An event set as soon as the transaction reaches `step` (a statement prefix, "begin" or "commit")."""
    reached = anyio.Event()

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(step):
            reached.set()

    if step in ("begin", "commit"):
        event.listen(engine.sync_engine, step, lambda conn: reached.set())
    else:
        event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    return reached


@pytest.mark.parametrize("step", STEPS)
async def test_a_caller_cancelled_mid_transition_leaves_nothing_locked_or_half_done(
    engine: AsyncEngine, migrated_url: str, clock: ManualClock, ids: SequentialIds, step: str
) -> None:
    store = SqlApprovalStore(engine, clock=clock, id_factory=ids)
    approval = await create(store)
    reached = signal_on(engine, step)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:

            async def decide() -> None:
                await store.transition(
                    approval.id, expected={S.PENDING}, to=S.APPROVED, audit=entering(S.APPROVED)
                )

            group.start_soon(decide)
            await reached.wait()
            group.cancel_scope.cancel()

    # A replica that will not wait for locks (SQLite's write lock, PostgreSQL's row and advisory
    # locks): it only succeeds if nobody is left holding them.
    sqlite = backend_of(migrated_url) is Backend.SQLITE
    impatient = create_store(
        migrated_url,
        clock=clock,
        id_factory=ids,
        db_timeout=0.05 if sqlite else DEFAULT_TIMEOUT,
        statement_timeout=1.0,
    )
    async with impatient:
        with anyio.fail_after(20):
            await create(impatient)
            stored = await impatient.get(approval.id)
            assert stored is not None
            events = [r.event for r in await impatient.audit_trail(approval.id)]
            assert events == (["requested", "approved"] if stored.status is S.APPROVED else ["requested"])
            await create(store)
            assert (await impatient.verify_audit_chain()).ok
