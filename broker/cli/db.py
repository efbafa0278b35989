"""``broker db upgrade``: the database migrations."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from broker.cli.common import Parser, fail


def register(commands: Any) -> None:
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=Parser)
    db_upgrade = db_commands.add_parser(
        "upgrade", help="apply the migrations (the broker also does on start)"
    )
    db_upgrade.add_argument("--database-url", help="default: $BROKER_DATABASE_URL or sqlite:///broker.db")
    db_upgrade.set_defaults(handler=_cmd_db_upgrade)


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from broker.approvals.ports import StoreUnavailable
    from broker.store.migrate import current_revision, upgrade

    url = args.database_url or os.environ.get("BROKER_DATABASE_URL") or "sqlite:///broker.db"
    try:
        asyncio.run(upgrade(url))
        revision = asyncio.run(current_revision(url))
    except StoreUnavailable as exc:
        fail(str(exc))
    print(f"database at revision {revision}")
    return 0
