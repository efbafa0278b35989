"""`EditStore` on the approval store's database (see broker.approvals.edits for the rules).

`approve_edited` is one writing transaction (`SqlApprovalStore.transaction`):

1. read the approval's row ``FOR UPDATE`` (on SQLite the transaction holds the write lock), so an
   edit, votes and plain decisions on one approval are serialized on every replica;
2. refuse unless pending (InvalidTransition) with the arguments the editor saw (ArgumentsChanged);
3. store the edited ``arguments`` and ``arguments_hash``, ``original_arguments`` (the agent's, kept
   from the first edit), ``edited_by``/``edited_at``, an empty ``votes`` list; ``request_key``
   stays: the agent's identical re-call carries the original arguments and must find this outcome;
4. delete the approval's rows in ``votes``: they were given for other arguments;
5. append ``edited`` (both hashes, each change), then record the editor's vote and tally it
   (broker.store.votes.cast_in), which approves the call when that one vote is enough.

Failures: StoreUnavailable (unreachable, timed out, refused), as everywhere in broker.store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import delete, update

from broker.approvals.audit import AuditEvent
from broker.approvals.clock import require_utc
from broker.approvals.edits import Edit
from broker.approvals.model import Vote
from broker.approvals.ports import Cast
from broker.approvals.quorum import Tally
from broker.store.rows import approval_from_row
from broker.store.sql import SqlApprovalStore
from broker.store.tables import approvals, votes
from broker.store.votes import cast_in, check_reason, locked_pending


class SqlEditStore:
    """EditStore (broker.approvals.edits) in the store's database, shared by every replica on it."""

    def __init__(self, store: SqlApprovalStore) -> None:
        self._store = store

    async def approve_edited(
        self,
        approval_id: str,
        edit: Edit,
        vote: Vote,
        *,
        seen_hash: str,
        reason: str | None,
        edited: AuditEvent,
        voted: AuditEvent,
        tally: Callable[[Sequence[Vote]], Tally],
    ) -> Cast:
        check_reason(reason)
        at = require_utc(vote.at, field="edit time")
        async with self._store.transaction("approve with edits") as conn:
            current = await locked_pending(conn, approval_id, seen_hash=seen_hash)
            original = current.original_arguments if current.is_edited else current.arguments
            row = (
                (
                    await conn.execute(
                        update(approvals)
                        .where(approvals.c.id == approval_id)
                        .values(
                            arguments=edit.arguments,
                            arguments_hash=edit.arguments_hash,
                            original_arguments=original,
                            edited_by=vote.approver,
                            edited_at=at,
                            votes=[],
                            version=approvals.c.version + 1,
                        )
                        .returning(*approvals.c)
                    )
                )
                .mappings()
                .one()
            )
            await conn.execute(delete(votes).where(votes.c.approval_id == approval_id))
            await self._store.append_in(conn, edited.for_approval(approval_id))
            return await cast_in(
                self._store, conn, approval_from_row(row), vote, reason=reason, audit=voted, tally=tally
            )
