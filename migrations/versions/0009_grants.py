"""Time-boxed grants (issue 12): an approval may let the agent's next calls like it through.

Revision: 0009
Previous: 0008

* ``votes.grant_request``: the grant a voter asked for beside their yes (NULL: none); the vote that reaches
  the quorum makes the narrowest one the counted voters agreed to.
* ``grants``: one row per grant (at most one per approval). ``used_calls`` is raised by a
  compare-and-increment that keeps it at most ``max_calls`` (also a CHECK constraint).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("votes") as batch:
        batch.add_column(sa.Column("grant_request", sa.Text(), nullable=True))
    op.create_table(
        "grants",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("approval_id", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("tool", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("policy_revision", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("arguments_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_calls", sa.Integer(), nullable=False),
        sa.Column("used_calls", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
        sa.ForeignKeyConstraint(["approval_id"], ["approvals.id"], name="fk_grants_approval_id"),
        sa.CheckConstraint("used_calls <= max_calls", name="ck_grants_used_calls"),
    )
    op.create_index("ix_grants_agent_tool", "grants", ["agent", "server", "tool"])
    op.create_index("ix_grants_created_at", "grants", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_grants_created_at", table_name="grants")
    op.drop_index("ix_grants_agent_tool", table_name="grants")
    op.drop_table("grants")
    with op.batch_alter_table("votes") as batch:
        batch.drop_column("grant_request")
