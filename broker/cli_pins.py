"""``broker tools pins`` and ``broker tools accept``: pinned tool definitions (broker.catalogue.pins).

Both read and write the store's ``tool_pins`` table directly (``--database-url``, as ``broker
audit verify`` does); every broker on that database sees an acceptance within
`broker.proxy.pinning.POLL_SECONDS`. Accepting a tool no broker has seen, or a store that cannot
be reached, is exit 2 with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from broker.approvals.clock import utc_now
from broker.catalogue.pins import Pin, PinNotFound


def register(tools_commands: Any, *, fail: Callable[[str], NoReturn]) -> None:
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
    _add_database_option(accept)
    accept.set_defaults(handler=lambda args: _accept(args, fail))


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
    except PinNotFound as exc:
        fail(str(exc))


def _pins(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    pins: Sequence[Pin] = _run(args, fail, lambda store: store.pins())
    shown = [pin for pin in pins if pin.pending or not args.pending]
    for pin in shown:
        if pin.pending:
            state = f"PENDING  offered {pin.seen_hash[:12]} since {pin.seen_at:%Y-%m-%d %H:%M}"
            state += f", accepted {pin.accepted_hash[:12]}" if pin.accepted_hash else ", never accepted"
        else:
            state = f"accepted {pin.accepted_hash[:12] if pin.accepted_hash else ''} by {pin.accepted_by}"
        print(f"{pin.server}__{pin.tool}  {state}")
    if not shown:
        print("no pending tool definitions" if args.pending else "no tools seen yet")
    return 0


def _accept(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    if args.all == bool(args.tools):
        fail("name the tools to accept, or give --all (not both)")
    by = args.by or getpass.getuser()
    at = utc_now()

    async def accept(store: Any) -> list[Pin]:
        if args.all:
            return list(await store.accept_all(by=by, at=at))
        accepted: list[Pin] = []
        for name in args.tools:
            server, qualified, bare = name.partition("__")
            if qualified and args.server is None:
                accepted.extend(await store.accept(bare, server=server, by=by, at=at))
            else:
                accepted.extend(await store.accept(name, server=args.server, by=by, at=at))
        return accepted

    accepted: list[Pin] = _run(args, fail, accept)
    for pin in accepted:
        print(f"{pin.server}__{pin.tool}: accepted {pin.seen_hash[:12]} by {by}")
    if not accepted:
        print("nothing pending to accept")
    return 0
