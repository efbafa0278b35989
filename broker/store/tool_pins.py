"""`PinStore` (broker.catalogue.pins) on the approval store's database: the ``tool_pins`` table
(migration 0015), shared by every replica on it.

A sighting is one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (a new tool, accepted at once
under trust on first use) and, when the row was there, a ``SELECT ... FOR UPDATE`` and an UPDATE
only if the definition changed, so replicas listing the same upstream at once write one row and
agree on ``first_seen_at``; an unchanged tool costs one statement and no write. Accepting is one
``UPDATE ... SET accepted_hash = seen_hash ... RETURNING``: the hash accepted is the one the row
holds at that instant, never a stale copy. Failures: StoreUnavailable, as everywhere in broker.store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Update, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.clock import require_utc
from broker.catalogue.pins import FIRST_USE, Pin, PinNotFound, Sighting
from broker.store.sql import SqlApprovalStore
from broker.store.tables import tool_pins

_PENDING = or_(tool_pins.c.accepted_hash.is_(None), tool_pins.c.accepted_hash != tool_pins.c.seen_hash)


class SqlToolPinStore:
    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store

    async def observe(
        self, server: str, tool: str, seen_hash: str, *, now: datetime, trust_new: bool
    ) -> Sighting:
        now = require_utc(now, field="sighting time")
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
        return Sighting(_pin(after), _pin(before))

    async def accept(self, tool: str, *, server: str | None, by: str, at: datetime) -> Sequence[Pin]:
        where = [tool_pins.c.tool == tool] + ([tool_pins.c.server == server] if server is not None else [])
        async with self._store.transaction("accept a tool definition") as conn:
            accepted = await self._accept(conn, update(tool_pins).where(*where, _PENDING), by, at)
            if not accepted:
                known = (await conn.execute(select(tool_pins.c.tool).where(*where).limit(1))).first()
                if known is None:
                    raise PinNotFound(server, tool)
        return accepted

    async def accept_all(self, *, by: str, at: datetime) -> Sequence[Pin]:
        async with self._store.transaction("accept every tool definition") as conn:
            return await self._accept(conn, update(tool_pins).where(_PENDING), by, at)

    async def pins(self) -> Sequence[Pin]:
        async with self._store.reading("list tool definitions") as conn:
            rows = (
                await conn.execute(select(tool_pins).order_by(tool_pins.c.server, tool_pins.c.tool))
            ).mappings()
            return [_pin(row) for row in rows]

    @staticmethod
    async def _accept(conn: AsyncConnection, statement: Update, by: str, at: datetime) -> list[Pin]:
        at = require_utc(at, field="acceptance time")
        rows = await conn.execute(
            statement.values(accepted_hash=tool_pins.c.seen_hash, accepted_by=by, accepted_at=at).returning(
                *tool_pins.c
            )
        )
        return sorted((_pin(row) for row in rows.mappings()), key=lambda pin: (pin.server, pin.tool))


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
