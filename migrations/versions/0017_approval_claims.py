"""The agent's token claims on its held call (issue 14): re-checks read the same ``claims.`` paths.

Revision: 0017
Previous: 0016

* ``approvals.claims``: the verified access token's claims the call was decided with, as canonical
  JSON; NULL for API-key agents and for calls held before this revision (those re-check as before,
  with every ``claims.`` path missing).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("claims", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("claims")
