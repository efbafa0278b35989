"""The approver's view (issue 11): arguments in the order the agent sent them.

Revision: 0004
Previous: 0003

``approvals.arguments`` stays canonical (keys sorted: it is what the hash covers);
``approvals.argument_order`` keeps the top-level argument names as the agent ordered them, so
every surface shows a call the way it was written. Rows from before this revision get ``[]``
and are shown in canonical order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("argument_order", sa.Text(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("argument_order")
