"""Pinned tool definitions (issue 13 item 4): what an operator accepted each upstream tool to be.

Revision: 0015
Previous: 0013 (the lead relinks the chain at merge time)

* ``tool_pins``: one row per (server, tool) with the definition hash last seen and the one
  accepted (broker.catalogue.pins, broker.store.tool_pins).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "tool_pins",
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("tool", sa.Text(), nullable=False),
        sa.Column("seen_hash", sa.String(64), nullable=False),
        sa.Column("accepted_hash", sa.String(64), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_by", sa.Text(), nullable=True),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("server", "tool", name="pk_tool_pins"),
    )


def downgrade() -> None:
    op.drop_table("tool_pins")
