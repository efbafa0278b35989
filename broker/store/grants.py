"""`GrantStore` on the approval store's database: the ``grants`` table (migration 0009).

Using a grant is one conditional UPDATE::

    UPDATE grants SET used_calls = used_calls + 1
     WHERE id = (SELECT id FROM grants WHERE <this agent, server, tool, rule, revision>
                   AND <usable at now> AND (scope = 'matching' OR arguments_hash = :hash)
                   AND NOT EXISTS (<an open approval for this exact call: the agent is back for it>)
                 ORDER BY expires_at, id LIMIT 1)
       AND <usable at now>
    RETURNING *

On PostgreSQL a racing UPDATE waits for the row lock and re-evaluates ``used_calls < max_calls``
on the row the winner left (READ COMMITTED), so however many calls race on however many replicas,
at most ``max_calls`` get a row back; SQLite serialises writers. A loser of the last call finds no
row and its call is held, as if there were no grant (never the other way round). The
``used_calls <= max_calls`` CHECK constraint backs this up. One round trip per held call that
looks for a grant; calls the policy allows never come here.

Grants are made inside the deciding vote's transaction (`insert_in`, used by broker.store.votes).
Revoking sets ``revoked_at`` once (a conditional UPDATE) and writes ``grant_revoked`` to the audit
trail of the approval that made it, in the same transaction.

Failures: StoreUnavailable (unreachable, timed out, refused), as everywhere in broker.store.
"""

from __future__ import annotations

import builtins
from datetime import datetime

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.clock import require_utc
from broker.approvals.grants import Grant, GrantScope
from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import GrantNotFound
from broker.store.sql import SqlApprovalStore
from broker.store.tables import approvals, grants


def _usable(now: datetime):  # type: ignore[no-untyped-def]
    return and_(
        grants.c.revoked_at.is_(None), grants.c.expires_at > now, grants.c.used_calls < grants.c.max_calls
    )


class SqlGrantStore:
    """GrantStore (broker.approvals.ports) in the store's database, shared by every replica on it."""

    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store

    async def use(
        self,
        *,
        agent: str,
        server: str,
        tool: str,
        rule: str,
        policy_revision: str,
        arguments_hash: str,
        request_key: str,
        now: datetime,
    ) -> Grant | None:
        now = require_utc(now, field="grant use time")
        candidate = (
            select(grants.c.id)
            .where(
                grants.c.agent == agent,
                grants.c.server == server,
                grants.c.tool == tool,
                grants.c.rule == rule,
                grants.c.policy_revision == policy_revision,
                _usable(now),
                or_(grants.c.scope == GrantScope.MATCHING.value, grants.c.arguments_hash == arguments_hash),
                ~exists().where(
                    approvals.c.request_key == request_key,
                    approvals.c.status != ApprovalStatus.CANCELLED.value,
                    approvals.c.result_delivered_at.is_(None),
                ),
            )
            .order_by(grants.c.expires_at, grants.c.id)
            .limit(1)
            .scalar_subquery()
        )
        statement = (
            update(grants)
            .where(grants.c.id == candidate, _usable(now))
            .values(used_calls=grants.c.used_calls + 1)
            .returning(*grants.c)
        )
        async with self._store.transaction("use a grant") as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else grant_from_row(row)

    async def give_back(self, grant_id: str) -> None:
        statement = (
            update(grants)
            .where(grants.c.id == grant_id, grants.c.used_calls > 0)
            .values(used_calls=grants.c.used_calls - 1)
        )
        async with self._store.transaction("give back a grant's use") as conn:
            await conn.execute(statement)

    async def get(self, grant_id: str) -> Grant | None:
        async with self._store.reading("get a grant") as conn:
            row = (await conn.execute(select(grants).where(grants.c.id == grant_id))).mappings().first()
        return None if row is None else grant_from_row(row)

    async def list(self, *, active_at: datetime | None = None, limit: int = 100) -> builtins.list[Grant]:
        query = select(grants).order_by(grants.c.created_at.desc(), grants.c.id.desc()).limit(limit)
        if active_at is not None:
            query = query.where(_usable(require_utc(active_at, field="listing time")))
        async with self._store.reading("list grants") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [grant_from_row(row) for row in rows]

    async def revoke(self, grant_id: str, *, by: str, at: datetime) -> tuple[Grant, bool]:
        at = require_utc(at, field="revocation time")
        async with self._store.transaction("revoke a grant") as conn:
            row = (
                (
                    await conn.execute(
                        update(grants)
                        .where(grants.c.id == grant_id, grants.c.revoked_at.is_(None))
                        .values(revoked_at=at, revoked_by=by)
                        .returning(*grants.c)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                current = (
                    (await conn.execute(select(grants).where(grants.c.id == grant_id))).mappings().first()
                )
                if current is None:
                    raise GrantNotFound(grant_id)
                return grant_from_row(current), False
            grant = grant_from_row(row)
            await self._store.append_in(
                conn,
                AuditEvent(
                    AuditEventKind.GRANT_REVOKED,
                    by,
                    {"grant": grant.id, "used_calls": grant.used_calls},
                    approval_id=grant.approval_id,
                ),
            )
        return grant, True


async def insert_in(conn: AsyncConnection, grant: Grant) -> None:
    """Stores a new grant inside the caller's transaction (the deciding vote's, broker.store.votes)."""
    await conn.execute(
        grants.insert().values(
            id=grant.id,
            approval_id=grant.approval_id,
            agent=grant.agent,
            server=grant.server,
            tool=grant.tool,
            rule=grant.rule,
            policy_revision=grant.policy_revision,
            scope=grant.scope.value,
            arguments_hash=grant.arguments_hash,
            created_by=list(grant.created_by),
            created_at=require_utc(grant.created_at, field="grant time"),
            expires_at=require_utc(grant.expires_at, field="grant expiry"),
            max_calls=grant.max_calls,
            used_calls=grant.used_calls,
        )
    )


def grant_from_row(row: RowMapping) -> Grant:
    return Grant(
        id=row["id"],
        approval_id=row["approval_id"],
        agent=row["agent"],
        server=row["server"],
        tool=row["tool"],
        rule=row["rule"],
        policy_revision=row["policy_revision"],
        scope=GrantScope(row["scope"]),
        arguments_hash=row["arguments_hash"],
        created_by=tuple(row["created_by"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        max_calls=row["max_calls"],
        used_calls=row["used_calls"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )
