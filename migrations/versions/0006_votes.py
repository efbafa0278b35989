"""Four-eyes approval (issue 12): a quorum per approval and the votes toward it.

Revision: 0006
Previous: 0005

* ``approvals.quorum``, ``approvals.quorum_from``: distinct approvers the rule asked for, and the
  groups (``["@risk", "@trading"]``) that each need one of them. Rows from before get 1 and ``[]``:
  a single decision, as they were asked.
* ``approvals.votes``: the yes votes so far, carried with the row so every surface shows progress.
* ``votes``: one row per (approval, approver), the primary key, so a person counts once even when
  two replicas record their votes at the same moment.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("quorum", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("quorum_from", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("votes", sa.Text(), nullable=False, server_default="[]"))
    op.create_table(
        "votes",
        sa.Column("approval_id", sa.Text(), nullable=False),
        sa.Column("approver", sa.Text(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("via", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("approval_id", "approver", name="pk_votes"),
        sa.ForeignKeyConstraint(["approval_id"], ["approvals.id"], name="fk_votes_approval_id"),
    )


def downgrade() -> None:
    op.drop_table("votes")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("votes")
        batch.drop_column("quorum_from")
        batch.drop_column("quorum")
