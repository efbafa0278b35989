"""``broker tools pins``, ``broker tools accept`` and ``broker tools events``: pinned tool
definitions (broker.catalogue.pins) and their events (broker.catalogue.tool_events).

``accept TOOL --hash H`` accepts only the definition the operator reviewed: H is the hash (its
first 12 or more hex digits) that ``pins`` and ``events`` print; when the tool now offers another
one, nothing is accepted (exit 2). All three read and write the store's ``tool_pins`` table directly (``--database-url``, as ``broker
audit verify`` does); every broker on that database sees an acceptance within
`broker.proxy.pinning.POLL_SECONDS`. Accepting a tool no broker has seen, or a store that cannot
be reached, is exit 2 with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from broker.approvals.clock import utc_now
from broker.catalogue.pins import DefinitionMoved, Pin, PinNotFound
from broker.catalogue.tool_events import ToolEvent
from broker.cli.common import fail

_HASH = re.compile(r"^[0-9a-f]{12,64}$")


def register(tools_commands: Any) -> None:
    listing = tools_commands.add_parser(
        "pins", help="accepted tool definitions, and changes pending acceptance"
    )
    listing.add_argument("--pending", action="store_true", help="only tools whose definition is not accepted")
    _add_database_option(listing)
    listing.set_defaults(handler=lambda args: _pins(args, fail))

    accept = tools_commands.add_parser(
        "accept", help="accept the definition an upstream offers now for tools whose definition changed"
    )
    accept.add_argument("tools", nargs="*", metavar="TOOL", help="tool names (or server__tool)")
    accept.add_argument("--server", help="only the tool on this upstream server")
    accept.add_argument("--all", action="store_true", help="accept every pending definition")
    accept.add_argument("--by", help="who accepts (default: the login name)")
    accept.add_argument(
        "--hash",
        dest="expected_hash",
        help="the definition hash you reviewed (as `broker tools pins` prints it)",
    )
    _add_database_option(accept)
    accept.set_defaults(handler=lambda args: _accept(args, fail))

    events = tools_commands.add_parser(
        "events", help="tool definitions first seen, changed (and what changed) and accepted"
    )
    events.add_argument("tool", nargs="?", metavar="TOOL", help="only this tool (name or server__tool)")
    events.add_argument("--server", help="only tools on this upstream server")
    events.add_argument("--limit", type=int, default=50, help="the newest N events (default 50)")
    _add_database_option(events)
    events.set_defaults(handler=lambda args: _events(args, fail))


def _add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="default: $BROKER_DATABASE_URL or sqlite:///broker.db")


def _run(args: argparse.Namespace, fail: Callable[[str], NoReturn], work: Callable[[Any], Any]) -> Any:
    from broker.approvals.ports import StoreUnavailable
    from broker.store.engine import create_store
    from broker.store.tool_pins import SqlToolPinStore

    url = args.database_url or os.environ.get("BROKER_DATABASE_URL") or "sqlite:///broker.db"

    async def run() -> Any:
        store = create_store(url)
        try:
            return await work(SqlToolPinStore(store))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        fail(f"cannot reach the store: {exc}")
    except (PinNotFound, DefinitionMoved) as exc:
        fail(str(exc))


def _pins(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    pins: Sequence[Pin] = _run(args, fail, lambda store: store.pins())
    shown = [pin for pin in pins if pin.pending or not args.pending]
    for pin in shown:
        if pin.pending:
            state = f"PENDING  offered {pin.seen_hash[:12]} since {pin.seen_at:%Y-%m-%d %H:%M}"
            state += f", accepted {pin.accepted_hash[:12]}" if pin.accepted_hash else ", never accepted"
            state += f"; review `broker tools events {pin.server}__{pin.tool}`, then accept --hash {pin.seen_hash[:12]}"
        else:
            state = f"accepted {pin.accepted_hash[:12] if pin.accepted_hash else ''} by {pin.accepted_by}"
        print(f"{pin.server}__{pin.tool}  {state}")
    if not shown:
        print("no pending tool definitions" if args.pending else "no tools seen yet")
    return 0


def _accept(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    if args.all == bool(args.tools):
        fail("name the tools to accept, or give --all (not both)")
    expected = args.expected_hash
    if expected is not None:
        if args.all or len(args.tools) != 1:
            fail("--hash goes with exactly one TOOL (each tool has its own definition hash)")
        if not _HASH.match(expected):
            fail(
                f"--hash must be 12 to 64 lowercase hex digits as `broker tools pins` prints, got {expected!r}"
            )
    by = args.by or getpass.getuser()
    at = utc_now()

    async def accept(store: Any) -> list[Pin]:
        if args.all:
            return list(await store.accept_all(by=by, at=at))
        accepted: list[Pin] = []
        for name in args.tools:
            server, qualified, bare = name.partition("__")
            if qualified and args.server is None:
                accepted.extend(await store.accept(bare, server=server, by=by, at=at, expected_hash=expected))
            else:
                accepted.extend(
                    await store.accept(name, server=args.server, by=by, at=at, expected_hash=expected)
                )
        return accepted

    accepted: list[Pin] = _run(args, fail, accept)
    for pin in accepted:
        print(f"{pin.server}__{pin.tool}: accepted {pin.seen_hash[:12]} by {by}")
    if not accepted:
        print("nothing pending to accept")
    return 0


def _events(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    if args.limit < 1:
        fail(f"--limit must be a positive number, got {args.limit}")
    server, qualified, bare = (args.tool or "").partition("__")
    tool, server = (bare, server) if qualified and args.server is None else (args.tool, args.server)
    found: Sequence[ToolEvent] = _run(
        args, fail, lambda store: store.events(tool=tool, server=server, limit=args.limit)
    )
    for event in found:
        moved = f"{event.old_hash[:12]} -> " if event.old_hash else ""
        print(
            f"{event.at:%Y-%m-%d %H:%M:%S}  {event.server}__{event.tool}  {event.kind}  {moved}{event.new_hash[:12]}  by {event.actor}"
        )
        for change in event.changes:
            print(f"    {change}")
    if not found:
        print("no tool definition events")
    return 0
