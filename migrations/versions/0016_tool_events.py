"""Tool-definition events (issue 13 item 4): a tool seen, changed or accepted.

Revision: 0016
Previous: 0015

* ``tool_events``: one row per event (broker.catalogue.tool_events, broker.store.tool_pins),
  written in the transaction that changes the tool's pin.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "tool_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("tool", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("old_hash", sa.String(64), nullable=True),
        sa.Column("new_hash", sa.String(64), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tool_events"),
    )
    op.create_index("ix_tool_events_server_tool_id", "tool_events", ["server", "tool", "id"])


def downgrade() -> None:
    op.drop_index("ix_tool_events_server_tool_id", table_name="tool_events")
    op.drop_table("tool_events")
