"""Approve with edits (issue 12): what an approver changed before approving.

Revision: 0008
Previous: 0007

* ``approvals.editable``: the top-level arguments the rule lets approvers change (``[]``: none,
  as every row from before).
* ``approvals.original_arguments``: the arguments as the agent sent them, kept once an approver
  changed them (``arguments`` and ``arguments_hash`` then hold what was approved and will run;
  ``request_key`` stays the original call's, so the agent's identical re-call finds its outcome).
* ``approvals.edited_by``, ``approvals.edited_at``: who changed them and when.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("editable", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("original_arguments", sa.Text(), nullable=True))
        batch.add_column(sa.Column("edited_by", sa.Text(), nullable=True))
        batch.add_column(sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("edited_at")
        batch.drop_column("edited_by")
        batch.drop_column("original_arguments")
        batch.drop_column("editable")
