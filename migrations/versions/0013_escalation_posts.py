"""Durable escalation posts (issue 12): a step's posts survive the replica that took the step.

Revision: 0013
Previous: 0009

* ``escalation_posts``: one row per (approval, step, channel) post, claimed by one writer at a time
  and settled once (broker.approvals.escalation_posts); the other replicas' reconcilers make the
  posts a dead replica left unmade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0009"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "escalation_posts",
        sa.Column("approval_id", sa.Text(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("writer", sa.Text(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("ts", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("approval_id", "step", "channel", name="pk_escalation_posts"),
        sa.ForeignKeyConstraint(["approval_id"], ["approvals.id"], name="fk_escalation_posts_approval_id"),
    )


def downgrade() -> None:
    op.drop_table("escalation_posts")
