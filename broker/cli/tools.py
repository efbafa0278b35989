"""``broker tools scan``, and ``pins``, ``accept`` and ``events`` from broker.cli.pins: the
upstreams' tools."""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli.common import Parser
from broker.cli.pins import register as register_pins
from broker.cli.upstreams import add_upstream_options, scan_upstreams


def register(commands: Any) -> None:
    tools = commands.add_parser("tools", help="inspect the upstreams' tools")
    tools_commands = tools.add_subparsers(dest="tools_command", required=True, parser_class=Parser)
    scan = tools_commands.add_parser("scan", help="list and risk-classify every upstream tool")
    add_upstream_options(scan)
    scan.add_argument("--json", action="store_true")
    scan.set_defaults(handler=_cmd_tools_scan)
    register_pins(tools_commands)


def _cmd_tools_scan(args: argparse.Namespace) -> int:
    from broker.catalogue import classify_tools, render_table, to_json

    result = scan_upstreams(args)
    classifications = classify_tools(result.tools)
    print(to_json(classifications) if args.json else render_table(classifications))
    return 0
