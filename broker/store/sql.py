"""The approval store on SQLAlchemy's async engine (SQLite or PostgreSQL).

Every state change is one conditional UPDATE evaluated by the database
(``WHERE id = :id AND status IN (:expected)``), so concurrent callers in any
number of processes see exactly one winner. The audit event of a change is
written in the same transaction, after the change has won.

This class is the facade: connections (shielded from cancellation, failures reported) come
from broker.store.connections, the audit chain is kept by broker.store.audit_log, rows are
mapped to approvals by broker.store.rows, and the fields a change may set are checked by
broker.store.changes.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import Any, Self

from sqlalchemy import Select, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.approvals.audit import (
    AuditEvent,
    AuditRecord,
    AuditVerification,
)
from broker.approvals.clock import Clock, require_utc
from broker.approvals.model import DELIVERABLE_STATUSES, Approval, ApprovalStatus, NewApproval
from broker.approvals.ports import (
    ApprovalConflict,
    ApprovalNotFound,
    InvalidTransition,
    ListPosition,
)
from broker.approvals.transitions import check_creation, check_transition
from broker.store.audit_log import append_event, read_trail, verify_chain
from broker.store.changes import BOOKKEEPING_FIELDS, NUL, TRANSITION_FIELDS, implied_fields, validated_changes
from broker.store.connections import Connections
from broker.store.database import DEFAULT_TIMEOUT
from broker.store.listing import list_rows
from broker.store.migrate import VERSION_TABLE
from broker.store.rows import approval_from_new, approval_from_row, row_from_approval
from broker.store.tables import approvals, audit_events

MAX_LIST_LIMIT = 1000
_NO_CHANGES: Mapping[str, Any] = MappingProxyType({})


class SqlApprovalStore:
    """ApprovalStore on an AsyncEngine built by `broker.store.database.build_engine`.

    The store owns the engine and disposes of it on `close`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock,
        id_factory: Callable[[], str],
        db_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._db = Connections(engine, db_timeout=db_timeout)
        self._clock = clock
        self._new_id = id_factory
        self._postgres = self._db.postgres

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, approval_id: str) -> Approval | None:
        if NUL in approval_id:
            return None  # no id holds one, and PostgreSQL would refuse the query
        async with self._db.reading("get approval") as conn:
            return await _fetch(conn, approval_id)

    async def get_by_task(self, task_id: str) -> Approval | None:
        if NUL in task_id:
            return None
        query = select(approvals).where(approvals.c.task_id == task_id)
        async with self._db.reading("get approval by task") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else approval_from_row(row)

    async def list(
        self,
        *,
        statuses: Collection[ApprovalStatus] | None = None,
        agent: str | None = None,
        tool: str | None = None,
        search: str | None = None,
        limit: int = 100,
        before: datetime | None = None,
        after: ListPosition | None = None,
        with_task: bool = False,
        oldest_first: bool = False,
    ) -> builtins.list[Approval]:
        _check_limit(limit)
        if any(NUL in (value or "") for value in (agent, tool, search)):
            return []
        async with self._db.reading("list approvals") as conn:
            rows = await list_rows(
                conn,
                statuses=statuses,
                agent=agent,
                tool=tool,
                search=search,
                limit=limit,
                before=before,
                after=after,
                with_task=with_task,
                oldest_first=oldest_first,
            )
        return [approval_from_row(row) for row in rows]

    async def due_for_expiry(self, now: datetime, *, limit: int = 100) -> builtins.list[Approval]:
        _check_limit(limit)
        query = (
            select(approvals)
            .where(
                approvals.c.status == ApprovalStatus.PENDING.value,
                approvals.c.expires_at <= require_utc(now, field="now"),
            )
            .order_by(approvals.c.expires_at, approvals.c.id)
            .limit(limit)
        )
        async with self._db.reading("find expired approvals") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [approval_from_row(row) for row in rows]

    async def schema_revision(self) -> str | None:
        """The migration this database is at, read on a pooled connection: a readiness probe
        must not open a connection of its own each time."""
        query = text(f"SELECT version_num FROM {VERSION_TABLE}")
        async with self._db.reading("read the schema revision") as conn:
            revision = (await conn.execute(query)).scalar_one_or_none()
        return None if revision is None else str(revision)

    async def pending_count(self, *, at_most: int | None = None) -> int:
        pending = approvals.c.status == ApprovalStatus.PENDING.value
        if at_most is None:
            query = select(func.count()).select_from(approvals).where(pending)
        else:
            # Counting stops after at_most + 1 rows: "more than at_most" costs no more than that.
            capped = select(approvals.c.id).where(pending).limit(at_most + 1).subquery()
            query = select(func.count()).select_from(capped)
        async with self._db.reading("count pending approvals") as conn:
            return int((await conn.execute(query)).scalar_one())

    async def changes_since(self, seq: int | None) -> tuple[int, set[str]]:
        async with self._db.reading("read recent changes") as conn:
            if seq is None:
                newest = (await conn.execute(select(func.max(audit_events.c.seq)))).scalar()
                return int(newest or 0), set()
            query = select(audit_events.c.seq, audit_events.c.approval_id).where(audit_events.c.seq > seq)
            rows = (await conn.execute(query)).all()
        return max((row.seq for row in rows), default=seq), {row.approval_id for row in rows}

    # -- writes --------------------------------------------------------------------------------

    async def create(self, new: NewApproval, *, audit: AuditEvent) -> Approval:
        approval_id = self._next_id()
        event = audit.for_approval(approval_id)
        async with self._db.writing("create approval") as conn:
            return await self._insert(conn, new, approval_id, [event])

    async def create_decided(
        self,
        new: NewApproval,
        *,
        to: ApprovalStatus,
        changes: Mapping[str, Any] = _NO_CHANGES,
        audit: Sequence[AuditEvent],
    ) -> Approval:
        """An approval that is never pending; see ApprovalStore.create_decided."""
        to = check_creation(to)
        values = validated_changes(changes, TRANSITION_FIELDS)
        if len(audit) < 2:
            raise ValueError("an approval created decided needs its request and its decision audited")
        approval_id = self._next_id()
        events = [event.for_approval(approval_id) for event in audit]
        async with self._db.writing(f"create {to.value} approval") as conn:
            decided = {**implied_fields(to, actor=events[-1].actor, now=self._now()), **values}
            return await self._insert(conn, new, approval_id, events, status=to, decided=decided)

    async def find_or_create(self, new: NewApproval, *, audit: AuditEvent) -> tuple[Approval, bool]:
        """The open approval for this exact call, or a new pending one: see ApprovalStore.find_or_create.

        The look-up and the insert share one transaction that holds a lock on the
        request key (SQLite: the write lock; PostgreSQL: an advisory lock derived
        from the key), so identical calls racing on any number of replicas park
        exactly one approval.
        """
        async with self._db.writing("find or create approval") as conn:
            if self._postgres:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _request_key_lock(new.request_key)}
                )
            row = (await conn.execute(_open_by_request_key(new.request_key))).mappings().first()
            if row is not None:
                return approval_from_row(row), False
            approval_id = self._next_id()
            return await self._insert(conn, new, approval_id, [audit.for_approval(approval_id)]), True

    async def transition(
        self,
        approval_id: str,
        *,
        expected: Collection[ApprovalStatus],
        to: ApprovalStatus,
        changes: Mapping[str, Any] = _NO_CHANGES,
        audit: AuditEvent,
    ) -> Approval:
        """Compare-and-set the status; see ApprovalStore.transition.

        Unless `changes` says otherwise, a decision records decided_at=now and
        decided_by=the audit actor, a release records released_at/released_by the
        same way, and completed/failed record completed_at=now.
        """
        to = ApprovalStatus(to)
        expected_statuses = check_transition(expected, to)
        values = validated_changes(changes, TRANSITION_FIELDS)
        event = audit.for_approval(approval_id)
        async with self._db.writing(f"move approval to {to.value}") as conn:
            now = self._now()
            values = {**implied_fields(to, actor=event.actor, now=now), **values}
            if values.get("task_id") is not None:
                await _ensure_task_free(conn, values["task_id"], approval_id)
            statement = (
                update(approvals)
                .where(
                    approvals.c.id == approval_id,
                    approvals.c.status.in_(sorted(status.value for status in expected_statuses)),
                )
                .values(status=to.value, version=approvals.c.version + 1, **values)
                .returning(*approvals.c)
            )
            row = (await conn.execute(statement)).mappings().first()
            if row is None:
                current = await _fetch_existing(conn, approval_id)
                raise InvalidTransition(current, expected=expected_statuses, to=to)
            await self._append(conn, event, now)
            return approval_from_row(row)

    async def update_fields(
        self, approval_id: str, changes: Mapping[str, Any], *, audit: AuditEvent | None = None
    ) -> Approval:
        values = validated_changes(changes, BOOKKEEPING_FIELDS)
        if not values:
            raise ValueError("update_fields needs at least one field to change")
        event = None if audit is None else audit.for_approval(approval_id)
        async with self._db.writing("update approval") as conn:
            now = self._now()
            if values.get("task_id") is not None:
                await _ensure_task_free(conn, values["task_id"], approval_id)
            statement = (
                update(approvals)
                .where(approvals.c.id == approval_id)
                .values(version=approvals.c.version + 1, **values)
                .returning(*approvals.c)
            )
            try:
                row = (await conn.execute(statement)).mappings().first()
            except IntegrityError as error:
                raise ApprovalConflict(f"task id {values.get('task_id')!r} is already taken") from error
            if row is None:
                raise ApprovalNotFound(approval_id)
            if event is not None:
                await self._append(conn, event, now)
            return approval_from_row(row)

    async def mark_delivered(
        self, approval_id: str, at: datetime, *, audit: AuditEvent | None = None
    ) -> bool:
        """Set result_delivered_at once. Raises InvalidTransition while there is no outcome to deliver."""
        delivered_at = require_utc(at, field="at")
        event = None if audit is None else audit.for_approval(approval_id)
        deliverable = sorted(status.value for status in DELIVERABLE_STATUSES)
        async with self._db.writing("mark approval delivered") as conn:
            now = self._now()
            statement = (
                update(approvals)
                .where(
                    approvals.c.id == approval_id,
                    approvals.c.result_delivered_at.is_(None),
                    approvals.c.status.in_(deliverable),
                )
                .values(result_delivered_at=delivered_at, version=approvals.c.version + 1)
                .returning(approvals.c.id)
            )
            if (await conn.execute(statement)).first() is not None:
                if event is not None:
                    await self._append(conn, event, now)
                return True
            current = await _fetch_existing(conn, approval_id)
            if current.status not in DELIVERABLE_STATUSES:
                raise InvalidTransition(current, expected=DELIVERABLE_STATUSES)
            return False

    async def assign_task(self, approval_id: str, task_id: str) -> Approval:
        async with self._db.writing("assign task") as conn:
            await _ensure_task_free(conn, task_id, approval_id)
            statement = (
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.task_id.is_(None))
                .values(task_id=task_id, version=approvals.c.version + 1)
                .returning(*approvals.c)
            )
            row = (await conn.execute(statement)).mappings().first()
            if row is not None:
                return approval_from_row(row)
            return await _fetch_existing(conn, approval_id)

    # -- audit ---------------------------------------------------------------------------------

    async def append_audit(self, event: AuditEvent) -> None:
        if event.approval_id is None:
            raise ValueError("append_audit needs an event with approval_id set")
        async with self._db.writing("append audit event") as conn:
            if await _fetch(conn, event.approval_id) is None:
                raise ApprovalNotFound(event.approval_id)
            await self._append(conn, event, self._now())

    async def audit_trail(self, approval_id: str) -> builtins.list[AuditRecord]:
        async with self._db.reading("read audit trail") as conn:
            return await read_trail(conn, approval_id)

    async def verify_audit_chain(
        self, *, batch_size: int = 500, expected_head: tuple[int, str] | None = None
    ) -> AuditVerification:
        """See broker.store.audit_log.verify_chain."""
        return await verify_chain(
            self._db.reading, postgres=self._postgres, batch_size=batch_size, expected_head=expected_head
        )

    async def close(self) -> None:
        await self._engine.dispose()

    def transaction(self, operation: str) -> AbstractAsyncContextManager[AsyncConnection]:
        """A writing transaction on this store's engine, for tables kept by sibling modules
        (broker.store.seen_requests): the same pool, the same SQLite writer queue, the same
        shielding and mapping of failures to StoreUnavailable."""
        return self._db.writing(operation)

    def reading(self, operation: str) -> AbstractAsyncContextManager[AsyncConnection]:
        """A reading connection on this store's engine, for sibling modules' queries."""
        return self._db.reading(operation)

    async def append_in(self, conn: AsyncConnection, event: AuditEvent) -> None:
        """Appends `event` to the audit chain inside a `transaction` (for sibling modules' tables)."""
        await self._append(conn, event, self._now())

    # -- health --------------------------------------------------------------------------------

    def report_failures_to(self, listener: Callable[[str], None]) -> None:
        """See broker.store.connections.Connections.report_failures_to."""
        self._db.report_failures_to(listener)

    async def probe(self) -> None:
        """See broker.store.connections.Connections.probe."""
        await self._db.probe()

    # -- internals -----------------------------------------------------------------------------

    def _next_id(self) -> str:
        approval_id = self._new_id()
        if not isinstance(approval_id, str) or not approval_id:
            raise ValueError(f"id_factory returned {approval_id!r}, not a non-empty string")
        return approval_id

    async def _insert(
        self,
        conn: AsyncConnection,
        new: NewApproval,
        approval_id: str,
        events: Sequence[AuditEvent],
        *,
        status: ApprovalStatus = ApprovalStatus.PENDING,
        decided: Mapping[str, Any] = _NO_CHANGES,
    ) -> Approval:
        now = self._now()
        if new.task_id is not None:
            await _ensure_task_free(conn, new.task_id, approval_id)
        approval = approval_from_new(new, approval_id, now, status=status, decided=decided)
        try:
            await conn.execute(insert(approvals).values(row_from_approval(approval)))
        except IntegrityError as error:
            raise ApprovalConflict(
                f"cannot create approval {approval_id}: its id or task id is already taken"
            ) from error
        for event in events:
            await self._append(conn, event, now)
        return approval

    def _now(self) -> datetime:
        return require_utc(self._clock(), field="clock()")

    async def _append(self, conn: AsyncConnection, event: AuditEvent, at: datetime) -> None:
        await append_event(conn, event, at, postgres=self._postgres)

    async def swap_slack_message(
        self,
        approval_id: str,
        *,
        expected_ts: str | None,
        channel: str | None,
        ts: str | None,
        audit: AuditEvent | None = None,
    ) -> tuple[Approval, bool]:
        """Compare-and-set of the Slack message fields; see ApprovalStore.swap_slack_message."""
        values = validated_changes({"slack_channel": channel, "slack_ts": ts}, BOOKKEEPING_FIELDS)
        if expected_ts is not None and not isinstance(expected_ts, str):
            raise ValueError(f"expected_ts must be a string or None, got {type(expected_ts).__name__}")
        event = None if audit is None else audit.for_approval(approval_id)
        unchanged = (
            approvals.c.slack_ts.is_(None) if expected_ts is None else approvals.c.slack_ts == expected_ts
        )
        async with self._db.writing("swap Slack message") as conn:
            now = self._now()
            statement = (
                update(approvals)
                .where(approvals.c.id == approval_id, unchanged)
                .values(version=approvals.c.version + 1, **values)
                .returning(*approvals.c)
            )
            row = (await conn.execute(statement)).mappings().first()
            if row is None:
                current = await _fetch_existing(conn, approval_id)
                return current, False
            if event is not None:
                await self._append(conn, event, now)
            return approval_from_row(row), True


def _open_by_request_key(request_key: str) -> Select[Any]:
    """Newest approval a repeated call attaches to: not cancelled, outcome not yet delivered."""
    return (
        select(approvals)
        .where(
            approvals.c.request_key == request_key,
            approvals.c.status != ApprovalStatus.CANCELLED.value,
            approvals.c.result_delivered_at.is_(None),
        )
        .order_by(approvals.c.created_at.desc(), approvals.c.id.desc())
        .limit(1)
    )


def _request_key_lock(request_key: str) -> int:
    """PostgreSQL advisory lock key for one request key (a 64-bit slice of the key's own sha256)."""
    return int.from_bytes(bytes.fromhex(request_key[:16]), "big", signed=True)


async def _fetch(conn: AsyncConnection, approval_id: str) -> Approval | None:
    row = (await conn.execute(select(approvals).where(approvals.c.id == approval_id))).mappings().first()
    return None if row is None else approval_from_row(row)


async def _fetch_existing(conn: AsyncConnection, approval_id: str) -> Approval:
    """The row a compare-and-set did not change, to say why; ApprovalNotFound if there is none."""
    current = await _fetch(conn, approval_id)
    if current is None:
        raise ApprovalNotFound(approval_id)
    return current


async def _ensure_task_free(conn: AsyncConnection, task_id: str, approval_id: str) -> None:
    query = select(approvals.c.id).where(approvals.c.task_id == task_id, approvals.c.id != approval_id)
    holder = (await conn.execute(query)).scalar()
    if holder is not None:
        raise ApprovalConflict(f"task id {task_id!r} already belongs to approval {holder}")


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be an integer between 1 and {MAX_LIST_LIMIT}, got {limit!r}")
