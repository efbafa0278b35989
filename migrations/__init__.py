"""Alembic migrations of the approval store; run them with `broker.store.migrate.upgrade`."""
