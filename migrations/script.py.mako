"""${message}

Revision: ${up_revision}
Previous: ${down_revision | comma,n}
Created: ${create_date}

Hand-review the DDL: it must match broker/store/tables.py on both SQLite and
PostgreSQL (tests/store checks that the two agree).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | tuple[str, ...] | None = ${repr(branch_labels)}
depends_on: str | tuple[str, ...] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
