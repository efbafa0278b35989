"""``broker demo calls``: an agent's calls through the demo broker."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from broker.cli.common import Parser, fail


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="try the broker started with 'broker serve --demo'")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True, parser_class=Parser)
    demo_calls = demo_commands.add_parser(
        "calls",
        help="act as an agent: make an allowed, a denied and a held call through the demo",
        description="Connects to the demo broker's /mcp as an agent, makes four calls (allowed, a tool "
        "error, denied, held for approval) and prints what the agent saw and how to decide the held one.",
    )
    demo_calls.add_argument(
        "--url", help="the broker's base URL (default: $BROKER_URL or http://127.0.0.1:8765)"
    )
    demo_calls.set_defaults(handler=_cmd_demo_calls)


def _cmd_demo_calls(args: argparse.Namespace) -> int:
    from broker.demo.agent import DemoAgentError, make_calls

    url = args.url or os.environ.get("BROKER_URL", "http://127.0.0.1:8765")
    try:
        asyncio.run(make_calls(url, sys.stdout))
    except DemoAgentError as exc:
        fail(str(exc))
    return 0
