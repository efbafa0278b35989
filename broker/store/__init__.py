"""SQL persistence for approvals (SQLite or PostgreSQL) and its schema migrations."""

from broker.store.engine import Backend, SqlApprovalStore, backend_of, create_store, database_url
from broker.store.migrate import current_revision, is_at_head, upgrade

__all__ = [
    "Backend",
    "SqlApprovalStore",
    "backend_of",
    "create_store",
    "current_revision",
    "database_url",
    "is_at_head",
    "upgrade",
]
