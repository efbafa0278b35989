"""The audit chain in the ``audit_events`` table: append, read one approval's trail, verify.

Every event carries the hash of the one before it (broker.approvals.canonical.audit_hash), so
the head is serialized per database: PostgreSQL takes a transaction-scoped advisory lock before
reading it; on SQLite every writing transaction already holds the single write lock (BEGIN
IMMEDIATE). Appends run inside the caller's transaction, after the change they record has won.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, insert, select, text, type_coerce
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.audit import (
    AuditEvent,
    AuditRecord,
    AuditVerification,
    ChainProblem,
    ChainVerifier,
    missing_events,
)
from broker.approvals.canonical import GENESIS_HASH, audit_hash, canonical_json
from broker.approvals.model import ApprovalStatus
from broker.store.tables import approvals, audit_events

AUDIT_CHAIN_LOCK = int.from_bytes(
    hashlib.sha256(b"mcp-approval-broker/audit-chain").digest()[:8], "big", signed=True
)
"""PostgreSQL advisory lock key serializing appends to the audit chain."""


async def append_event(conn: AsyncConnection, event: AuditEvent, at: datetime, *, postgres: bool) -> None:
    assert event.approval_id is not None, "events are bound to an approval before they reach the chain"
    if postgres:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_CHAIN_LOCK})
    head_query = select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
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


async def read_trail(conn: AsyncConnection, approval_id: str) -> list[AuditRecord]:
    query = select(audit_events).where(audit_events.c.approval_id == approval_id).order_by(audit_events.c.seq)
    rows = (await conn.execute(query)).mappings().all()
    return [_record_from_row(row, details=_parse_details(row["seq"], row["details"])) for row in rows]


async def verify_chain(
    reading: Callable[[str], AbstractAsyncContextManager[AsyncConnection]],
    *,
    postgres: bool,
    batch_size: int,
    expected_head: tuple[int, str] | None,
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
    at_column = type_coerce(audit_events.c.at, Text).label("at") if not postgres else audit_events.c.at
    columns = [column for column in audit_events.c if column.name != "at"] + [at_column]
    last_seq = 0
    async with reading("verify audit chain") as conn:
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
