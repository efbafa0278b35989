"""`EscalationPostStore` on the approval store's database: the ``escalation_posts`` table (migration 0013).

Claiming a post is one transaction::

    INSERT .. ON CONFLICT (approval_id, step, channel) DO NOTHING RETURNING   -- nobody claimed it yet
    UPDATE .. SET writer = :writer, claimed_until = :until
     WHERE <this post> AND outcome IS NULL AND (writer = :writer OR claimed_until <= :now)
    RETURNING                                                                 -- else: renew or take over

The primary key decides the first claim; the conditional UPDATE (re-evaluated on the row the
winner left under PostgreSQL's READ COMMITTED, serialised on SQLite) decides a takeover, so of any
number of replicas exactly one holds a post's claim at a time. Settling is a conditional UPDATE on
the writer still holding it.

Failures: StoreUnavailable (unreachable, timed out, refused), as everywhere in broker.store.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from broker.approvals.clock import require_utc
from broker.approvals.escalation_posts import EscalationPost, PostOutcome
from broker.store.sql import SqlApprovalStore
from broker.store.tables import escalation_posts as posts

_CHUNK = 500


class SqlEscalationPostStore:
    """EscalationPostStore (broker.approvals.escalation_posts) shared by every replica on the database."""

    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store

    async def claim(
        self, approval_id: str, step: int, channel: str, *, writer: str, now: datetime, until: datetime
    ) -> bool:
        now = require_utc(now, field="now")
        until = require_utc(until, field="until")
        key = (posts.c.approval_id == approval_id, posts.c.step == step, posts.c.channel == channel)
        async with self._store.transaction("claim an escalation post") as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            inserted = await conn.execute(
                dialect.insert(posts)
                .values(
                    approval_id=approval_id, step=step, channel=channel, writer=writer, claimed_until=until
                )
                .on_conflict_do_nothing(index_elements=[posts.c.approval_id, posts.c.step, posts.c.channel])
                .returning(posts.c.step)
            )
            if inserted.first() is not None:
                return True
            taken = await conn.execute(
                update(posts)
                .where(
                    *key,
                    posts.c.outcome.is_(None),
                    or_(posts.c.writer == writer, posts.c.claimed_until <= now),
                )
                .values(writer=writer, claimed_until=until)
                .returning(posts.c.step)
            )
            return taken.first() is not None

    async def settle(
        self, approval_id: str, step: int, channel: str, *, writer: str, outcome: PostOutcome, ts: str | None
    ) -> bool:
        async with self._store.transaction("settle an escalation post") as conn:
            settled = await conn.execute(
                update(posts)
                .where(
                    posts.c.approval_id == approval_id,
                    posts.c.step == step,
                    posts.c.channel == channel,
                    posts.c.writer == writer,
                    posts.c.outcome.is_(None),
                )
                .values(outcome=outcome.value, ts=ts)
                .returning(posts.c.step)
            )
            return settled.first() is not None

    async def of(self, approval_ids: Collection[str]) -> builtins.list[EscalationPost]:
        wanted = sorted(set(approval_ids))
        found: list[EscalationPost] = []
        async with self._store.reading("read escalation posts") as conn:
            for start in range(0, len(wanted), _CHUNK):
                rows = await conn.execute(
                    select(posts).where(posts.c.approval_id.in_(wanted[start : start + _CHUNK]))
                )
                for row in rows.mappings():
                    found.append(
                        EscalationPost(
                            approval_id=row["approval_id"],
                            step=row["step"],
                            channel=row["channel"],
                            writer=row["writer"],
                            claimed_until=row["claimed_until"],
                            outcome=PostOutcome(row["outcome"]) if row["outcome"] is not None else None,
                            ts=row["ts"],
                        )
                    )
        return found
