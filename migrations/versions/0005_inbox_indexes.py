"""The approver's view (issue 11): indexes for the inbox, its filters and the history.

Revision: 0005
Previous: 0004

Each listing (broker/store/listing.py) reads rows already ordered by ``(created_at, id)`` and
stops at its page size, instead of sorting every pending approval: 100,000 of them made the
inbox and ``GET /api/approvals?status=pending`` take about 200 ms. The history (every status
but pending) gets a partial index, so a long queue of pending calls does not slow it down.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_DECIDED = sa.text("status <> 'pending'")


def upgrade() -> None:
    op.create_index("ix_approvals_status_created_at_id", "approvals", ["status", "created_at", "id"])
    op.create_index(
        "ix_approvals_status_agent_created_at_id", "approvals", ["status", "agent", "created_at", "id"]
    )
    op.create_index(
        "ix_approvals_status_tool_created_at_id", "approvals", ["status", "tool", "created_at", "id"]
    )
    op.create_index(
        "ix_approvals_decided_created_at_id",
        "approvals",
        ["created_at", "id"],
        sqlite_where=_DECIDED,
        postgresql_where=_DECIDED,
    )


def downgrade() -> None:
    op.drop_index("ix_approvals_decided_created_at_id", table_name="approvals")
    op.drop_index("ix_approvals_status_tool_created_at_id", table_name="approvals")
    op.drop_index("ix_approvals_status_agent_created_at_id", table_name="approvals")
    op.drop_index("ix_approvals_status_created_at_id", table_name="approvals")
