"""Spend limits (issue 13): the ledger of spend counted against each limit's counter.

Revision: 0014
Previous: 0013

* ``spend_entries``: one row per (reservation, counter); reserved while ``lease_until`` is set,
  committed once it is NULL (broker.store.spend). Pruned by age.
* PostgreSQL only: ``spend_reserve(...)``, the whole reservation in one round trip
  (broker.store.pg_spend); its text lives in broker.store.pg_spend so the two never drift.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "spend_entries",
        sa.Column("reservation", sa.Text(), nullable=False),
        sa.Column("counter", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("lease_until", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("reservation", "counter", name="pk_spend_entries"),
    )
    op.create_index("ix_spend_entries_counter_at", "spend_entries", ["counter", "at"])
    op.create_index("ix_spend_entries_at", "spend_entries", ["at"])
    if op.get_context().dialect.name == "postgresql":
        from broker.store.pg_spend import RESERVE_FUNCTION

        op.execute(RESERVE_FUNCTION)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS spend_reserve")
    op.drop_index("ix_spend_entries_at", table_name="spend_entries")
    op.drop_index("ix_spend_entries_counter_at", table_name="spend_entries")
    op.drop_table("spend_entries")
