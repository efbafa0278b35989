"""`PinStore` (broker.catalogue.pins) on the approval store's database: the ``tool_pins`` table
(migration 0015), shared by every replica on it.

A sighting is one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (a new tool, accepted at once
under trust on first use) and, when the row was there, a ``SELECT ... FOR UPDATE`` and an UPDATE
only if the definition changed, so replicas listing the same upstream at once write one row and
agree on ``first_seen_at``; an unchanged tool costs one statement and no write. Accepting is one
``UPDATE ... SET accepted_hash = seen_hash ... RETURNING``: the hash accepted is the one the row
holds at that instant, never a stale copy; with an expected hash, the rows are locked first and
a definition that moved since it was reviewed is refused (DefinitionMoved) and nothing is accepted.

Each of these writes its `ToolEvent` (broker.catalogue.tool_events) in the same transaction, after
the insert or the row lock was won: one event per change however many replicas saw it.
Failures: StoreUnavailable, as everywhere in broker.store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.canonical import canonical_json
from broker.approvals.clock import require_utc
from broker.catalogue.pins import FIRST_USE, PINNED_FIELDS, DefinitionMoved, Pin, PinNotFound, Sighting
from broker.catalogue.tool_events import ToolEvent, ToolEventKind, describe_change
from broker.store.sql import SqlApprovalStore
from broker.store.tables import tool_events, tool_pins
from broker.store.tool_event_retention import prune_tool_events

_PENDING = or_(tool_pins.c.accepted_hash.is_(None), tool_pins.c.accepted_hash != tool_pins.c.seen_hash)


class SqlToolPinStore:
    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store

    async def observe(
        self,
        server: str,
        tool: str,
        seen_hash: str,
        *,
        now: datetime,
        trust_new: bool,
        definition: Mapping[str, Any] | None = None,
    ) -> Sighting:
        now = require_utc(now, field="sighting time")
        pinned = _pinned_json(definition)
        values: dict[str, Any] = {
            "server": server,
            "tool": tool,
            "seen_hash": seen_hash,
            "first_seen_at": now,
            "seen_at": now,
        }
        if trust_new:
            values.update(accepted_hash=seen_hash, accepted_by=FIRST_USE, accepted_at=now)
        key = (tool_pins.c.server == server, tool_pins.c.tool == tool)
        async with self._store.transaction("record a tool definition") as conn:
            inserted = (await conn.execute(_insert_new(conn, values))).mappings().first()
            if inserted is not None:
                await _record(
                    conn, server, tool, ToolEventKind.SEEN, None, seen_hash, "broker", now, (), pinned
                )
                if trust_new:
                    await _record(conn, server, tool, ToolEventKind.ACCEPTED, None, seen_hash, FIRST_USE, now)
                return Sighting(_pin(inserted), None)
            before = (await conn.execute(select(tool_pins).where(*key).with_for_update())).mappings().one()
            if before["seen_hash"] == seen_hash:
                return Sighting(_pin(before), _pin(before))
            after = (
                (
                    await conn.execute(
                        update(tool_pins)
                        .where(*key)
                        .values(seen_hash=seen_hash, seen_at=now)
                        .returning(*tool_pins.c)
                    )
                )
                .mappings()
                .one()
            )
            changes = describe_change(
                await _last_definition(conn, server, tool, before["seen_hash"]), _loads(pinned)
            )
            await _record(
                conn,
                server,
                tool,
                ToolEventKind.CHANGED,
                before["seen_hash"],
                seen_hash,
                "broker",
                now,
                changes,
                pinned,
            )
        return Sighting(_pin(after), _pin(before))

    async def accept(
        self, tool: str, *, server: str | None, by: str, at: datetime, expected_hash: str | None = None
    ) -> Sequence[Pin]:
        where = [tool_pins.c.tool == tool] + ([tool_pins.c.server == server] if server is not None else [])
        async with self._store.transaction("accept a tool definition") as conn:
            accepted = await _accept(conn, where, by, at, expected_hash, tool)
            if not accepted:
                known = (await conn.execute(select(tool_pins.c.tool).where(*where).limit(1))).first()
                if known is None:
                    raise PinNotFound(server, tool)
        return accepted

    async def accept_all(self, *, by: str, at: datetime) -> Sequence[Pin]:
        async with self._store.transaction("accept every tool definition") as conn:
            return await _accept(conn, [], by, at, None, None)

    async def pins(self) -> Sequence[Pin]:
        async with self._store.reading("list tool definitions") as conn:
            rows = (
                await conn.execute(select(tool_pins).order_by(tool_pins.c.server, tool_pins.c.tool))
            ).mappings()
            return [_pin(row) for row in rows]

    async def events(
        self, *, tool: str | None = None, server: str | None = None, limit: int = 100
    ) -> Sequence[ToolEvent]:
        """The newest `limit` events (of `tool`, on `server`), oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        query = select(*(column for column in tool_events.c if column.name != "definition"))
        if tool is not None:
            query = query.where(tool_events.c.tool == tool)
        if server is not None:
            query = query.where(tool_events.c.server == server)
        async with self._store.reading("list tool definition events") as conn:
            rows = (await conn.execute(query.order_by(tool_events.c.id.desc()).limit(limit))).mappings().all()
        return [_event(row) for row in reversed(rows)]

    async def prune_events(self, *, before: datetime, limit: int) -> int:
        return await prune_tool_events(self._store, before=before, limit=limit)


async def _accept(
    conn: AsyncConnection,
    where: list[ColumnElement[bool]],
    by: str,
    at: datetime,
    expected_hash: str | None,
    tool: str | None,
) -> list[Pin]:
    at = require_utc(at, field="acceptance time")
    rows = (await conn.execute(select(tool_pins).where(*where, _PENDING).with_for_update())).mappings().all()
    if expected_hash is not None:
        for row in rows:
            if not row["seen_hash"].startswith(expected_hash):
                raise DefinitionMoved(row["server"], row["tool"], expected_hash, row["seen_hash"])
        if not rows and tool is not None:
            # Already accepted (by someone else, or at first use): fine only if it is the one reviewed.
            for row in (await conn.execute(select(tool_pins).where(*where))).mappings():
                if not row["seen_hash"].startswith(expected_hash):
                    raise DefinitionMoved(row["server"], row["tool"], expected_hash, row["seen_hash"])
    accepted: list[Pin] = []
    for row in rows:
        after = (
            (
                await conn.execute(
                    update(tool_pins)
                    .where(tool_pins.c.server == row["server"], tool_pins.c.tool == row["tool"])
                    .values(accepted_hash=row["seen_hash"], accepted_by=by, accepted_at=at)
                    .returning(*tool_pins.c)
                )
            )
            .mappings()
            .one()
        )
        await _record(
            conn,
            row["server"],
            row["tool"],
            ToolEventKind.ACCEPTED,
            row["accepted_hash"],
            row["seen_hash"],
            by,
            at,
        )
        accepted.append(_pin(after))
    return sorted(accepted, key=lambda pin: (pin.server, pin.tool))


async def _record(
    conn: AsyncConnection,
    server: str,
    tool: str,
    kind: ToolEventKind,
    old_hash: str | None,
    new_hash: str,
    actor: str,
    at: datetime,
    changes: tuple[str, ...] = (),
    definition: str | None = None,
) -> None:
    await conn.execute(
        insert(tool_events).values(
            server=server,
            tool=tool,
            kind=kind.value,
            old_hash=old_hash,
            new_hash=new_hash,
            actor=actor,
            at=at,
            changes=list(changes),
            definition=definition,
        )
    )


async def _last_definition(
    conn: AsyncConnection, server: str, tool: str, seen_hash: str
) -> Mapping[str, Any] | None:
    """The definition recorded with the sighting of `seen_hash` (None: recorded before 0016)."""
    query = (
        select(tool_events.c.definition)
        .where(
            tool_events.c.server == server,
            tool_events.c.tool == tool,
            tool_events.c.new_hash == seen_hash,
            tool_events.c.definition.is_not(None),
        )
        .order_by(tool_events.c.id.desc())
        .limit(1)
    )
    return _loads((await conn.execute(query)).scalar())


def _pinned_json(definition: Mapping[str, Any] | None) -> str | None:
    if definition is None:
        return None
    try:
        return canonical_json({field: definition.get(field) for field in PINNED_FIELDS})
    except ValueError:
        return None


def _loads(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _event(row: RowMapping) -> ToolEvent:
    return ToolEvent(
        id=row["id"],
        server=row["server"],
        tool=row["tool"],
        kind=ToolEventKind(row["kind"]),
        old_hash=row["old_hash"],
        new_hash=row["new_hash"],
        actor=row["actor"],
        at=row["at"],
        changes=tuple(row["changes"]),
    )


def _insert_new(conn: AsyncConnection, values: dict[str, Any]) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(tool_pins)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["server", "tool"])
        .returning(*tool_pins.c)
    )


def _pin(row: RowMapping) -> Pin:
    return Pin(
        server=row["server"],
        tool=row["tool"],
        seen_hash=row["seen_hash"],
        accepted_hash=row["accepted_hash"],
        first_seen_at=row["first_seen_at"],
        seen_at=row["seen_at"],
        accepted_by=row["accepted_by"],
        accepted_at=row["accepted_at"],
    )
