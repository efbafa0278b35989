"""Escalation (issue 12): who is asked next when nobody decided a held call.

Revision: 0007
Previous: 0006

* ``approvals.escalation``: the rule's steps, kept with the call (a reload does not change the
  plan of a call already waiting). Rows from before get ``[]``: they never escalate.
* ``approvals.escalation_step``: how many steps have been reached; a step is taken by a
  compare-and-set on it, so exactly one replica escalates each step.
* ``approvals.next_escalation_at``: when the next step is due (NULL: none), indexed with the
  status so a sweep finds the due ones with one range read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("escalation", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("escalation_step", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_escalation_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_approvals_status_next_escalation_at", "approvals", ["status", "next_escalation_at"])


def downgrade() -> None:
    op.drop_index("ix_approvals_status_next_escalation_at", table_name="approvals")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("next_escalation_at")
        batch.drop_column("escalation_step")
        batch.drop_column("escalation")
