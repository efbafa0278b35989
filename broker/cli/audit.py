"""``broker audit verify``: the hash chain of the approvals audit log, read from the database."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from broker.cli.common import Parser, fail


def register(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the approvals audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, parser_class=Parser)
    verify = audit_commands.add_parser("verify", help="check the hash chain (exit 1 when it is broken)")
    verify.add_argument("--database-url", help="default: $BROKER_DATABASE_URL or sqlite:///broker.db")
    verify.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify; it must still be there",
    )
    verify.set_defaults(handler=_cmd_audit_verify)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from broker.approvals.ports import StoreUnavailable
    from broker.store.engine import create_store

    url = args.database_url or os.environ.get("BROKER_DATABASE_URL") or "sqlite:///broker.db"
    expected_head = None
    if args.expect_head is not None:
        seq, _, head_hash = args.expect_head.partition(":")
        if not seq.isdigit() or len(head_hash) != 64:
            fail(
                f"--expect-head: expected SEQ:HASH as printed by an earlier verify, got {args.expect_head!r}"
            )
        expected_head = (int(seq), head_hash)

    async def verify() -> Any:
        store = create_store(url)
        try:
            return await store.verify_audit_chain(expected_head=expected_head)
        finally:
            await store.close()

    try:
        verification = asyncio.run(verify())
    except StoreUnavailable as exc:
        fail(f"cannot read the audit log: {exc}")
    if verification.ok:
        print(
            f"audit log intact: {verification.rows_checked} events; head "
            f"{verification.head_seq}:{verification.head_hash} (keep it elsewhere and pass it to "
            "--expect-head next time: that also detects deleted newest rows)"
        )
        return 0
    where = f" at seq {verification.broken_seq}" if verification.broken_seq is not None else ""
    print(
        f"audit log BROKEN{where} ({verification.problem}): {verification.explanation}",
        file=sys.stderr,
    )
    return 1
