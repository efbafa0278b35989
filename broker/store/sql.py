"""The approval store on SQLAlchemy's async engine (SQLite or PostgreSQL).

Every state change is one conditional UPDATE evaluated by the database
(``WHERE id = :id AND status IN (:expected)``), so concurrent callers in any
number of processes see exactly one winner. The audit event of a change is
written in the same transaction, after the change has won.

Database work is shielded from the caller's cancellation: a driver call abandoned
halfway strands its connection (with aiosqlite it can keep SQLite's write lock
until every other writer times out), so an operation always runs to its end and
the caller sees its cancellation right after. Every driver call is bounded by the
engine's timeouts (see broker.store.database), so a shielded operation cannot hang.

The audit chain head is serialized per database: PostgreSQL takes a
transaction-scoped advisory lock before reading it; on SQLite every writing
transaction already holds the single write lock (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Self

import anyio
from sqlalchemy import Select, Text, func, insert, select, text, type_coerce, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.approvals.audit import (
    AuditEvent,
    AuditRecord,
    AuditVerification,
    ChainProblem,
    ChainVerifier,
    missing_events,
)
from broker.approvals.canonical import GENESIS_HASH, audit_hash, canonical_json
from broker.approvals.clock import Clock, require_utc
from broker.approvals.model import DELIVERABLE_STATUSES, Approval, ApprovalStatus, NewApproval
from broker.approvals.ports import (
    ApprovalConflict,
    ApprovalNotFound,
    InvalidTransition,
    InvalidValue,
    ListPosition,
    StoreUnavailable,
)
from broker.approvals.transitions import check_transition
from broker.store.database import DEFAULT_TIMEOUT, writing
from broker.store.escalation_rows import escalation_columns, escalation_fields, first_escalation_at
from broker.store.failures import store_unavailable_on_db_error
from broker.store.listing import list_rows
from broker.store.migrate import VERSION_TABLE
from broker.store.probe import open_sqlite_afresh
from broker.store.tables import approvals, audit_events
from broker.store.vote_rows import votes_from_json, votes_json

AUDIT_CHAIN_LOCK = int.from_bytes(
    hashlib.sha256(b"mcp-approval-broker/audit-chain").digest()[:8], "big", signed=True
)
"""PostgreSQL advisory lock key serializing appends to the audit chain."""

MAX_LIST_LIMIT = 1000
_NUL = "\x00"
"""PostgreSQL text cannot hold it; refused on every backend so both behave alike."""
_NO_CHANGES: Mapping[str, Any] = MappingProxyType({})

# Fields a transition may set alongside the status, with the type each must have.
_TRANSITION_FIELDS: Mapping[str, type] = {
    "decided_by": str,
    "decided_at": datetime,
    "decided_via": str,
    "decision_reason": str,
    "released_at": datetime,
    "released_by": str,
    "completed_at": datetime,
    "result": dict,
    "result_delivered_at": datetime,
    "task_id": str,
    "slack_channel": str,
    "slack_ts": str,
}
# Bookkeeping fields that carry no state and may change outside a transition.
_BOOKKEEPING_FIELDS: Mapping[str, type] = {
    **{
        name: _TRANSITION_FIELDS[name]
        for name in ("slack_channel", "slack_ts", "result_delivered_at", "task_id")
    },
    "pending_told_at": datetime,
    "callers": int,
}
_DECISIONS = frozenset(
    {ApprovalStatus.APPROVED, ApprovalStatus.DENIED, ApprovalStatus.EXPIRED, ApprovalStatus.CANCELLED}
)
_OUTCOMES = frozenset({ApprovalStatus.COMPLETED, ApprovalStatus.FAILED, ApprovalStatus.OUTCOME_UNKNOWN})


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
        self._writer = writing(engine)
        self._clock = clock
        self._new_id = id_factory
        self._postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time, and a connection that finds the write lock taken
        # waits in SQLite's busy handler, which sleeps up to 100 ms between tries. Queueing this
        # process's writers here instead hands the lock over as soon as it is free.
        self._local_writers = anyio.Lock() if not self._postgres else None
        self._failure_listeners: builtins.list[Callable[[str], None]] = []
        self._sqlite_path = engine.url.database or ""
        self._db_timeout = db_timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, approval_id: str) -> Approval | None:
        if _NUL in approval_id:
            return None  # no id holds one, and PostgreSQL would refuse the query
        async with self._reading("get approval") as conn:
            return await _fetch(conn, approval_id)

    async def get_by_task(self, task_id: str) -> Approval | None:
        if _NUL in task_id:
            return None
        query = select(approvals).where(approvals.c.task_id == task_id)
        async with self._reading("get approval by task") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _approval_from_row(row)

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
        if any(_NUL in (value or "") for value in (agent, tool, search)):
            return []
        async with self._reading("list approvals") as conn:
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
        return [_approval_from_row(row) for row in rows]

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
        async with self._reading("find expired approvals") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_approval_from_row(row) for row in rows]

    async def schema_revision(self) -> str | None:
        """The migration this database is at, read on a pooled connection: a readiness probe
        must not open a connection of its own each time."""
        query = text(f"SELECT version_num FROM {VERSION_TABLE}")
        async with self._reading("read the schema revision") as conn:
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
        async with self._reading("count pending approvals") as conn:
            return int((await conn.execute(query)).scalar_one())

    async def changes_since(self, seq: int | None) -> tuple[int, set[str]]:
        async with self._reading("read recent changes") as conn:
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
        async with self._writing("create approval") as conn:
            return await self._insert(conn, new, approval_id, event)

    async def find_or_create(self, new: NewApproval, *, audit: AuditEvent) -> tuple[Approval, bool]:
        """The open approval for this exact call, or a new pending one: see ApprovalStore.find_or_create.

        The look-up and the insert share one transaction that holds a lock on the
        request key (SQLite: the write lock; PostgreSQL: an advisory lock derived
        from the key), so identical calls racing on any number of replicas park
        exactly one approval.
        """
        async with self._writing("find or create approval") as conn:
            if self._postgres:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _request_key_lock(new.request_key)}
                )
            row = (await conn.execute(_open_by_request_key(new.request_key))).mappings().first()
            if row is not None:
                return _approval_from_row(row), False
            approval_id = self._next_id()
            return await self._insert(conn, new, approval_id, audit.for_approval(approval_id)), True

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
        values = _validated_changes(changes, _TRANSITION_FIELDS)
        event = audit.for_approval(approval_id)
        async with self._writing(f"move approval to {to.value}") as conn:
            now = self._now()
            values = {**_implied_fields(to, actor=event.actor, now=now), **values}
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
            return _approval_from_row(row)

    async def update_fields(
        self, approval_id: str, changes: Mapping[str, Any], *, audit: AuditEvent | None = None
    ) -> Approval:
        values = _validated_changes(changes, _BOOKKEEPING_FIELDS)
        if not values:
            raise ValueError("update_fields needs at least one field to change")
        event = None if audit is None else audit.for_approval(approval_id)
        async with self._writing("update approval") as conn:
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
            return _approval_from_row(row)

    async def mark_delivered(
        self, approval_id: str, at: datetime, *, audit: AuditEvent | None = None
    ) -> bool:
        """Set result_delivered_at once. Raises InvalidTransition while there is no outcome to deliver."""
        delivered_at = require_utc(at, field="at")
        event = None if audit is None else audit.for_approval(approval_id)
        deliverable = sorted(status.value for status in DELIVERABLE_STATUSES)
        async with self._writing("mark approval delivered") as conn:
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
        async with self._writing("assign task") as conn:
            await _ensure_task_free(conn, task_id, approval_id)
            statement = (
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.task_id.is_(None))
                .values(task_id=task_id, version=approvals.c.version + 1)
                .returning(*approvals.c)
            )
            row = (await conn.execute(statement)).mappings().first()
            if row is not None:
                return _approval_from_row(row)
            return await _fetch_existing(conn, approval_id)

    # -- audit ---------------------------------------------------------------------------------

    async def append_audit(self, event: AuditEvent) -> None:
        if event.approval_id is None:
            raise ValueError("append_audit needs an event with approval_id set")
        async with self._writing("append audit event") as conn:
            if await _fetch(conn, event.approval_id) is None:
                raise ApprovalNotFound(event.approval_id)
            await self._append(conn, event, self._now())

    async def audit_trail(self, approval_id: str) -> builtins.list[AuditRecord]:
        query = (
            select(audit_events).where(audit_events.c.approval_id == approval_id).order_by(audit_events.c.seq)
        )
        async with self._reading("read audit trail") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record_from_row(row, details=_parse_details(row["seq"], row["details"])) for row in rows]

    async def verify_audit_chain(
        self, *, batch_size: int = 500, expected_head: tuple[int, str] | None = None
    ) -> AuditVerification:
        """Walk the whole chain in seq order, `batch_size` rows per query, and report the first break;
        then check every approval against its events, and that `expected_head` (a head recorded
        earlier: seq, hash) is still in the chain."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        verifier = ChainVerifier()
        if expected_head is not None:
            verifier.hashes_at[expected_head[0]] = ""
        # Timestamps are read as raw text on SQLite, where a hand-edited row can hold
        # anything, so a tampered value is reported instead of crashing the walk.
        at_column = (
            type_coerce(audit_events.c.at, Text).label("at") if not self._postgres else audit_events.c.at
        )
        columns = [column for column in audit_events.c if column.name != "at"] + [at_column]
        last_seq = 0
        async with self._reading("verify audit chain") as conn:
            while not verifier.broken:
                query = (
                    select(*columns)
                    .where(audit_events.c.seq > last_seq)
                    .order_by(audit_events.c.seq)
                    .limit(batch_size)
                )
                batch = (await conn.execute(query)).mappings().all()
                if not batch:
                    break
                for row in batch:
                    try:
                        record = _record_from_row(
                            row, details=_parse_details(row["seq"], row["details"]), at=_parse_at(row["at"])
                        )
                    except ValueError as error:
                        verifier.unreadable(row["seq"], str(error))
                        break
                    if not verifier.feed(record):
                        break
                last_seq = batch[-1]["seq"]
            if not verifier.broken:
                await _check_events_cover_statuses(conn, verifier)
        if expected_head is not None and not verifier.broken:
            seq, expected_hash = expected_head
            found = verifier.hashes_at.get(seq)
            if found != expected_hash:
                verifier.fail(
                    ChainProblem.HEAD_MISSING,
                    f"the head recorded earlier (seq {seq}, {expected_hash[:12]}…) is "
                    + ("no longer in the chain" if not found else f"now {found[:12]}…")
                    + ": rows at the end of the log were deleted or rewritten",
                    seq=seq,
                )
        return verifier.result()

    async def close(self) -> None:
        await self._engine.dispose()

    def transaction(self, operation: str) -> AbstractAsyncContextManager[AsyncConnection]:
        """A writing transaction on this store's engine, for tables kept by sibling modules
        (broker.store.seen_requests): the same pool, the same SQLite writer queue, the same
        shielding and mapping of failures to StoreUnavailable."""
        return self._writing(operation)

    def reading(self, operation: str) -> AbstractAsyncContextManager[AsyncConnection]:
        """A reading connection on this store's engine, for sibling modules' queries."""
        return self._reading(operation)

    async def append_in(self, conn: AsyncConnection, event: AuditEvent) -> None:
        """Appends `event` to the audit chain inside a `transaction` (for sibling modules' tables)."""
        await self._append(conn, event, self._now())

    # -- health --------------------------------------------------------------------------------

    def report_failures_to(self, listener: Callable[[str], None]) -> None:
        """`listener` hears every StoreUnavailable this store raises, as it is raised (see
        broker.approvals.health); it must not block."""
        self._failure_listeners.append(listener)

    async def probe(self) -> None:
        """One round trip proving the database answers; raises StoreUnavailable when it does not.

        PostgreSQL: ``SELECT 1`` on a pooled connection (the pool's pre-ping replaces a dead one).
        SQLite: the file is opened afresh at its path and its schema version read, because pooled
        connections keep working on a file that was moved, deleted or replaced, and would go on
        writing approvals into a file nobody will find again.
        """
        if self._postgres:
            async with self._reading("probe the database") as conn:
                await conn.execute(text("SELECT 1"))
            return
        with self._reported():
            await open_sqlite_afresh(self._sqlite_path, timeout=self._db_timeout)

    # -- internals -----------------------------------------------------------------------------

    def _next_id(self) -> str:
        approval_id = self._new_id()
        if not isinstance(approval_id, str) or not approval_id:
            raise ValueError(f"id_factory returned {approval_id!r}, not a non-empty string")
        return approval_id

    async def _insert(
        self, conn: AsyncConnection, new: NewApproval, approval_id: str, event: AuditEvent
    ) -> Approval:
        now = self._now()
        if new.task_id is not None:
            await _ensure_task_free(conn, new.task_id, approval_id)
        approval = Approval(
            id=approval_id,
            status=ApprovalStatus.PENDING,
            agent=new.agent,
            session_id=new.session_id,
            server=new.server,
            tool=new.tool,
            upstream_tool=new.upstream_tool,
            arguments=dict(new.arguments),
            arguments_hash=new.arguments_hash,
            request_key=new.request_key,
            policy_revision=new.policy_revision,
            rule=new.rule,
            rule_reason=new.rule_reason,
            approvers=new.approvers,
            channels=new.channels,
            created_at=now,
            expires_at=now + new.timeout,
            version=1,
            task_id=new.task_id,
            argument_order=new.argument_order,
            quorum=new.quorum,
            quorum_from=new.quorum_from,
            escalation=new.escalation,
            next_escalation_at=first_escalation_at(now, new.escalation),
            editable=new.editable,
            claims=None if new.claims is None else dict(new.claims),
        )
        try:
            await conn.execute(insert(approvals).values(_row_from_approval(approval)))
        except IntegrityError as error:
            raise ApprovalConflict(
                f"cannot create approval {approval_id}: its id or task id is already taken"
            ) from error
        await self._append(conn, event, now)
        return approval

    def _now(self) -> datetime:
        return require_utc(self._clock(), field="clock()")

    @asynccontextmanager
    async def _reading(self, operation: str) -> AsyncIterator[AsyncConnection]:
        with self._reported(), store_unavailable_on_db_error(operation), anyio.CancelScope(shield=True):
            async with self._engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def _writing(self, operation: str) -> AsyncIterator[AsyncConnection]:
        with self._reported(), store_unavailable_on_db_error(operation):
            # Waiting for this process's turn may be cancelled; the transaction itself may not.
            async with self._local_writers or nullcontext():
                with anyio.CancelScope(shield=True):
                    async with self._writer.begin() as conn:
                        yield conn

    @contextmanager
    def _reported(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable as error:
            for listener in self._failure_listeners:
                listener(str(error))
            raise

    async def _append(self, conn: AsyncConnection, event: AuditEvent, at: datetime) -> None:
        assert event.approval_id is not None, "events are bound to an approval before they reach the chain"
        if self._postgres:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_CHAIN_LOCK})
        head_query = (
            select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
        )
        head = (await conn.execute(head_query)).first()
        seq, prev_hash = (1, GENESIS_HASH) if head is None else (head.seq + 1, head.hash)
        details = dict(event.details)
        digest = audit_hash(
            prev_hash,
            seq=seq,
            approval_id=event.approval_id,
            event=event.event,
            actor=event.actor,
            at=at,
            details=details,
        )
        await conn.execute(
            insert(audit_events).values(
                seq=seq,
                approval_id=event.approval_id,
                event=event.event,
                actor=event.actor,
                at=at,
                details=canonical_json(details),
                prev_hash=prev_hash,
                hash=digest,
            )
        )

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
        values = _validated_changes({"slack_channel": channel, "slack_ts": ts}, _BOOKKEEPING_FIELDS)
        if expected_ts is not None and not isinstance(expected_ts, str):
            raise ValueError(f"expected_ts must be a string or None, got {type(expected_ts).__name__}")
        event = None if audit is None else audit.for_approval(approval_id)
        unchanged = (
            approvals.c.slack_ts.is_(None) if expected_ts is None else approvals.c.slack_ts == expected_ts
        )
        async with self._writing("swap Slack message") as conn:
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
            return _approval_from_row(row), True


async def _check_events_cover_statuses(conn: AsyncConnection, verifier: ChainVerifier) -> None:
    recorded: dict[str, set[str]] = {}
    events = select(audit_events.c.approval_id, audit_events.c.event).group_by(
        audit_events.c.approval_id, audit_events.c.event
    )
    for approval_id, event in (await conn.execute(events)).all():
        recorded.setdefault(approval_id, set()).add(event)
    statuses = select(approvals.c.id, approvals.c.status, approvals.c.result_delivered_at).order_by(
        approvals.c.created_at, approvals.c.id
    )
    for approval_id, raw_status, delivered_at in (await conn.execute(statuses)).all():
        status = ApprovalStatus(raw_status)
        missing = missing_events(status, recorded.get(approval_id, set()), delivered=delivered_at is not None)
        if missing:
            verifier.fail(
                ChainProblem.MISSING_EVENTS,
                f"approval {approval_id} is {status.value} but its {', '.join(missing)} event(s) are "
                "missing: audit rows were deleted",
            )
            return


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
    return None if row is None else _approval_from_row(row)


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


def _validated_changes(changes: Mapping[str, Any], allowed: Mapping[str, type]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in changes.items():
        kind = allowed.get(name)
        if kind is None:
            raise ValueError(f"field {name!r} cannot be changed here; allowed: {', '.join(sorted(allowed))}")
        if value is None:
            values[name] = None
        elif not isinstance(value, kind):
            raise ValueError(f"field {name!r} must be {kind.__name__} or None, got {type(value).__name__}")
        elif isinstance(value, datetime):
            values[name] = require_utc(value, field=name)
        elif isinstance(value, dict):
            canonical_json(value)  # refuse values that would not survive storage
            values[name] = value
        elif isinstance(value, str) and _NUL in value:
            raise InvalidValue(f"{name} contains a NUL character, which the store cannot keep")
        else:
            values[name] = value
    return values


def _implied_fields(to: ApprovalStatus, *, actor: str, now: datetime) -> dict[str, Any]:
    if to in _DECISIONS:
        return {"decided_at": now, "decided_by": actor}
    if to is ApprovalStatus.RELEASED:
        return {"released_at": now, "released_by": actor}
    if to in _OUTCOMES:
        return {"completed_at": now}
    return {}


def _row_from_approval(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "status": approval.status.value,
        "agent": approval.agent,
        "session_id": approval.session_id,
        "server": approval.server,
        "tool": approval.tool,
        "upstream_tool": approval.upstream_tool,
        "arguments": approval.arguments,
        "arguments_hash": approval.arguments_hash,
        "request_key": approval.request_key,
        "policy_revision": approval.policy_revision,
        "rule": approval.rule,
        "rule_reason": approval.rule_reason,
        "approvers": list(approval.approvers),
        "channels": list(approval.channels),
        "created_at": approval.created_at,
        "expires_at": approval.expires_at,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at,
        "decided_via": approval.decided_via,
        "decision_reason": approval.decision_reason,
        "released_at": approval.released_at,
        "released_by": approval.released_by,
        "completed_at": approval.completed_at,
        "result": approval.result,
        "result_delivered_at": approval.result_delivered_at,
        "task_id": approval.task_id,
        "slack_channel": approval.slack_channel,
        "slack_ts": approval.slack_ts,
        "argument_order": list(approval.argument_order),
        "callers": approval.callers,
        "pending_told_at": approval.pending_told_at,
        "quorum": approval.quorum,
        "quorum_from": list(approval.quorum_from),
        "votes": votes_json(approval.votes),
        **escalation_columns(approval),
        "editable": list(approval.editable),
        "original_arguments": approval.original_arguments,
        "edited_by": approval.edited_by,
        "edited_at": approval.edited_at,
        "claims": approval.claims,
        "version": approval.version,
    }


def _approval_from_row(row: RowMapping) -> Approval:
    return Approval(
        id=row["id"],
        status=ApprovalStatus(row["status"]),
        agent=row["agent"],
        session_id=row["session_id"],
        server=row["server"],
        tool=row["tool"],
        upstream_tool=row["upstream_tool"],
        arguments=row["arguments"],
        arguments_hash=row["arguments_hash"],
        request_key=row["request_key"],
        policy_revision=row["policy_revision"],
        rule=row["rule"],
        rule_reason=row["rule_reason"],
        approvers=tuple(row["approvers"]),
        channels=tuple(row["channels"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        version=row["version"],
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        decided_via=row["decided_via"],
        decision_reason=row["decision_reason"],
        released_at=row["released_at"],
        released_by=row["released_by"],
        completed_at=row["completed_at"],
        result=row["result"],
        result_delivered_at=row["result_delivered_at"],
        task_id=row["task_id"],
        slack_channel=row["slack_channel"],
        slack_ts=row["slack_ts"],
        argument_order=tuple(row["argument_order"]),
        callers=row["callers"],
        pending_told_at=row["pending_told_at"],
        quorum=row["quorum"],
        quorum_from=tuple(row["quorum_from"]),
        votes=votes_from_json(row["votes"]),
        **escalation_fields(row),
        editable=tuple(row["editable"]),
        original_arguments=row["original_arguments"],
        edited_by=row["edited_by"],
        edited_at=row["edited_at"],
        claims=row["claims"],
    )


def _record_from_row(row: RowMapping, *, details: dict[str, Any], at: datetime | None = None) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        approval_id=row["approval_id"],
        event=row["event"],
        actor=row["actor"],
        at=row["at"] if at is None else at,
        details=details,
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def _parse_details(seq: int, raw: str) -> dict[str, Any]:
    try:
        details = json.loads(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"audit row {seq} has details that are not JSON: {error}") from error
    if not isinstance(details, dict):
        raise ValueError(f"audit row {seq} has details that are not a JSON object")
    return details


def _parse_at(raw: object) -> datetime:
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw)
        except ValueError as error:
            raise ValueError(f"timestamp {raw!r} is not a datetime") from error
    else:
        raise ValueError(f"timestamp {raw!r} is not a datetime")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
