"""Opening an approval store from a database URL."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import URL

from broker.approvals.clock import Clock, utc_now
from broker.approvals.ids import UlidFactory
from broker.store.database import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_STATEMENT_TIMEOUT,
    DEFAULT_TIMEOUT,
    Backend,
    backend_of,
    build_engine,
    database_url,
)
from broker.store.sql import SqlApprovalStore

__all__ = ["Backend", "SqlApprovalStore", "backend_of", "create_store", "database_url"]


def create_store(
    url: str | URL,
    *,
    clock: Clock = utc_now,
    id_factory: Callable[[], str] | None = None,
    db_timeout: float = DEFAULT_TIMEOUT,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> SqlApprovalStore:
    """An approval store on `url`. The schema must already be migrated (see broker.store.migrate).

    The timeouts and the connection cap are those of `broker.store.database.build_engine`.
    """
    return SqlApprovalStore(
        build_engine(
            url, db_timeout=db_timeout, statement_timeout=statement_timeout, max_connections=max_connections
        ),
        clock=clock,
        id_factory=id_factory if id_factory is not None else UlidFactory(clock),
        db_timeout=db_timeout,
    )
