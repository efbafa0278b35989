"""The `broker` command line: one module per command group, each adding its commands with
`register(commands)`. Usage errors and bad input exit with status 2 and a message."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from broker.cli import approvals, audit, db, demo, grants, hash_password, policy, serve, tools
from broker.cli.common import EXIT_USAGE, CliError, Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="broker", description="MCP approval broker: a policy gateway for AI agents' tool calls."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (serve, policy, approvals, grants, audit, db, tools, demo, hash_password):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CliError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code
