"""Truthful outcomes (issue 10): the outcome_unknown status, callers per approval, replayed requests.

Revision: 0003
Previous: 0002

* ``outcome_unknown``: a released call that was sent upstream but never answered (the broker died
  or lost the upstream mid-call) is no longer called ``failed``.
* ``approvals.callers``: how many agent requests an approval answers (identical calls attach).
* ``approvals.pending_told_at``: when an agent was first told its call is pending; from then on
  only an explicit cancellation withdraws it.
* ``seen_requests``: digests of signed requests (Slack interactions) already accepted, kept for
  their validity window so that a replay is refused by every replica.

SQLite cannot alter a CHECK constraint in place, so the approvals table is rebuilt in batch mode
there (Alembic copies the rows).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_OLD = ("pending", "approved", "released", "completed", "failed", "denied", "expired", "cancelled")
_NEW = (*_OLD, "outcome_unknown")


def _check(statuses: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{status}'" for status in statuses) + ")"


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_constraint("ck_approvals_status", type_="check")
        batch.create_check_constraint("ck_approvals_status", _check(_NEW))
        batch.add_column(sa.Column("callers", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("pending_told_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "seen_requests",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_seen_requests"),
    )
    op.create_index("ix_seen_requests_expires_at", "seen_requests", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_requests_expires_at", table_name="seen_requests")
    op.drop_table("seen_requests")
    op.execute("UPDATE approvals SET status = 'failed' WHERE status = 'outcome_unknown'")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("pending_told_at")
        batch.drop_column("callers")
        batch.drop_constraint("ck_approvals_status", type_="check")
        batch.create_check_constraint("ck_approvals_status", _check(_OLD))
