"""`VoteStore` on the approval store's database: the ``votes`` table (migration 0006).

`cast` is one writing transaction on the store's engine (`SqlApprovalStore.transaction`):

1. read the approval's row ``FOR UPDATE`` (PostgreSQL; on SQLite the transaction already holds the
   single write lock): votes on one approval are serialized, on every replica, while votes on
   other approvals go on;
2. refuse unless it is pending (InvalidTransition with the row, nothing recorded), and, when the
   voter said which arguments they saw, unless the row still has exactly those (ArgumentsChanged:
   an approver edited them in between, see broker.store.edits);
3. ``INSERT .. ON CONFLICT (approval_id, approver) DO NOTHING``: the primary key makes a person
   count once, whichever channel they voted through; a repeat only adds its ``voted`` event;
4. tally every stored vote (the caller's pure tally, see broker.approvals.quorum) and update the
   row: its ``votes`` list for display, and, when the quorum is reached, pending -> approved with
   the counted approvers as ``decided_by``, in the same conditional UPDATE as any transition.

Two last votes on two replicas: the second waits on the row lock until the first commits, then
sees both votes; if the first reached the quorum the second finds the row approved and gets
InvalidTransition. So the move to approved happens exactly once and no vote is lost to a race.

Failures: StoreUnavailable (unreachable, timed out, refused), as everywhere in broker.store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.clock import require_utc
from broker.approvals.grants import Grant, GrantRequest
from broker.approvals.model import Approval, ApprovalStatus, Vote
from broker.approvals.ports import (
    ApprovalNotFound,
    ArgumentsChanged,
    Cast,
    InvalidTransition,
    InvalidValue,
)
from broker.approvals.quorum import Tally
from broker.store.grants import insert_in
from broker.store.rows import approval_from_row
from broker.store.sql import SqlApprovalStore
from broker.store.tables import approvals, votes
from broker.store.vote_rows import votes_json

_PENDING = frozenset({ApprovalStatus.PENDING})


class SqlVoteStore:
    """VoteStore (broker.approvals.ports) in the store's database, shared by every replica on it."""

    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store

    async def cast(
        self,
        approval_id: str,
        vote: Vote,
        *,
        reason: str | None,
        audit: AuditEvent,
        tally: Callable[[Sequence[Vote]], Tally],
        arguments_hash: str | None = None,
        grant: GrantRequest | None = None,
        make_grant: Callable[[Approval, Tally, Mapping[str, GrantRequest | None]], Grant | None]
        | None = None,
    ) -> Cast:
        check_reason(reason)
        async with self._store.transaction("record a vote") as conn:
            current = await locked_pending(conn, approval_id, seen_hash=arguments_hash)
            return await cast_in(
                self._store,
                conn,
                current,
                vote,
                reason=reason,
                audit=audit,
                tally=tally,
                grant=grant,
                make_grant=make_grant,
            )


def check_reason(reason: str | None) -> None:
    if reason is not None and "\x00" in reason:
        raise InvalidValue("the reason contains a NUL character, which the store cannot keep")


async def locked_pending(conn: AsyncConnection, approval_id: str, *, seen_hash: str | None) -> Approval:
    """The approval's row, held until the transaction ends; refused unless pending (and, with
    `seen_hash`, unless it still has the arguments the person saw)."""
    locked = select(approvals).where(approvals.c.id == approval_id).with_for_update()
    row = (await conn.execute(locked)).mappings().first()
    if row is None:
        raise ApprovalNotFound(approval_id)
    current = approval_from_row(row)
    if current.status is not ApprovalStatus.PENDING:
        raise InvalidTransition(current, expected=_PENDING, to=ApprovalStatus.APPROVED)
    if seen_hash is not None and seen_hash != current.arguments_hash:
        raise ArgumentsChanged(current, seen_hash=seen_hash)
    return current


async def cast_in(
    store: SqlApprovalStore,
    conn: AsyncConnection,
    current: Approval,
    vote: Vote,
    *,
    reason: str | None,
    audit: AuditEvent,
    tally: Callable[[Sequence[Vote]], Tally],
    grant: GrantRequest | None = None,
    make_grant: Callable[[Approval, Tally, Mapping[str, GrantRequest | None]], Grant | None] | None = None,
) -> Cast:
    """Steps 3 and 4 above, inside the caller's transaction holding `current`'s row."""
    approval_id = current.id
    at = require_utc(vote.at, field="vote time")
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    inserted = await conn.execute(
        dialect.insert(votes)
        .values(
            approval_id=approval_id,
            approver=vote.approver,
            groups=sorted(vote.groups),
            via=vote.via,
            reason=reason,
            at=at,
            grant_request=None if grant is None else grant.to_json(),
        )
        .on_conflict_do_nothing(index_elements=[votes.c.approval_id, votes.c.approver])
        .returning(votes.c.approver)
    )
    new = inserted.first() is not None
    await store.append_in(conn, audit.for_approval(approval_id))
    if not new:
        return Cast(current, new=False, decided=False)
    records = list(
        await conn.execute(
            select(votes).where(votes.c.approval_id == approval_id).order_by(votes.c.at, votes.c.approver)
        )
    )
    stored = [Vote(record.approver, frozenset(record.groups), record.via, record.at) for record in records]
    result = tally(stored)
    values: dict[str, object] = {"votes": votes_json(stored), "version": approvals.c.version + 1}
    if result.reached:
        values.update(
            status=ApprovalStatus.APPROVED.value,
            decided_by=", ".join(result.counted),
            decided_at=at,
            decided_via=vote.via,
            decision_reason=reason,
        )
    changed = (
        (
            await conn.execute(
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.status == ApprovalStatus.PENDING.value)
                .values(**values)
                .returning(*approvals.c)
            )
        )
        .mappings()
        .one()
    )
    approved = approval_from_row(changed)
    made: Grant | None = None
    if result.reached:
        details = {"approvers": list(result.counted), "via": vote.via}
        await store.append_in(
            conn,
            AuditEvent(AuditEventKind.APPROVED, vote.approver, details, approval_id=approval_id),
        )
        if make_grant is not None:
            requests = {
                record.approver: None
                if record.grant_request is None
                else GrantRequest.from_json(record.grant_request)
                for record in records
            }
            made = make_grant(approved, result, requests)
        if made is not None:
            await insert_in(conn, made)
            await store.append_in(
                conn,
                AuditEvent(
                    AuditEventKind.GRANTED,
                    vote.approver,
                    {
                        "grant": made.id,
                        "scope": made.scope.value,
                        "expires_at": made.expires_at.isoformat(),
                        "max_calls": made.max_calls,
                        "approvers": list(made.created_by),
                    },
                    approval_id=approval_id,
                ),
            )
    return Cast(approved, new=True, decided=result.reached, grant=made)
