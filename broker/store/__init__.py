"""SQL persistence for approvals (SQLite or PostgreSQL) and its schema migrations.

Modules are imported by name (`broker.store.engine`, `broker.store.migrate`, ...): importing the
package pulls in nothing, so configuration checks need not load SQLAlchemy's engine and Alembic.
"""
