"""Rate limits shared by broker replicas (PostgreSQL only).

Revision: 0002
Previous: 0001

One row per rate-limit key (agent session + policy rule, as bytes: a key may hold NUL)
with the wall-clock timestamps of its counted calls; see broker/store/ratelimit.py.
UNLOGGED: counters are not worth a WAL write per call and may start from zero after a
database crash. SQLite gets nothing: one SQLite file serves one host, where the broker's
in-memory limiter is the default and Redis the shared option.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _on_postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _on_postgresql():
        return
    op.create_table(
        "rate_limit_hits",
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("hits", postgresql.ARRAY(sa.Float(precision=53)), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_limit_hits"),
        prefixes=["UNLOGGED"],
    )
    op.create_index("ix_rate_limit_hits_expires_at", "rate_limit_hits", ["expires_at"])


def downgrade() -> None:
    if not _on_postgresql():
        return
    op.drop_index("ix_rate_limit_hits_expires_at", table_name="rate_limit_hits")
    op.drop_table("rate_limit_hits")
