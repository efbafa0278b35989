"""``broker grants list|revoke`` and the ``--grant`` options of ``broker approvals approve``.

Both talk to the grants API (broker/channels/grants_api.py) with an approver token, as
``broker approvals`` does. A bad ``--grant`` duration is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from broker.cli.api import add_api_options, api_call
from broker.cli.common import Parser
from broker.policy.duration import parse_duration

ApiCall = Callable[..., Any]


def _minutes(text: str) -> float:
    try:
        return parse_duration(text) / 60
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--grant {exc}") from None


def add_grant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grant",
        type=_minutes,
        metavar="DURATION",
        help="also let the agent's next calls like this one through for DURATION (e.g. 30m), "
        "within the rule's 'grant' bounds",
    )
    parser.add_argument(
        "--grant-scope",
        choices=["identical", "matching"],
        default="identical",
        help="identical arguments only (default), or any arguments the same rule still holds",
    )
    parser.add_argument(
        "--grant-calls", type=int, metavar="N", help="at most N calls (default: the rule's max_calls)"
    )


def grant_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.grant is None:
        return {}
    grant: dict[str, Any] = {"minutes": args.grant, "scope": args.grant_scope}
    if args.grant_calls is not None:
        grant["max_calls"] = args.grant_calls
    return {"grant": grant}


def grant_note(approval: dict[str, Any]) -> str:
    """`` + grant for 30 min (10 calls, matching): g-…`` after an approval that made one."""
    if "grant" not in approval:
        return ""
    grant = approval["grant"]
    if grant is None:
        return " (no grant: not every counted approver asked for one)"
    return f" + {grant['summary']}: {grant['id']}"


def register(commands: Any) -> None:
    grants = commands.add_parser("grants", help="list and revoke time-boxed grants")
    sub = grants.add_subparsers(dest="grants_command", required=True, parser_class=Parser)
    listing = sub.add_parser("list", help="grants, newest first")
    listing.add_argument(
        "--active", action="store_true", help="only grants that can still let a call through"
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    add_api_options(listing)
    listing.set_defaults(handler=lambda args: _list(args, api_call))
    revoke = sub.add_parser("revoke", help="end a grant now")
    revoke.add_argument("id")
    add_api_options(revoke)
    revoke.set_defaults(handler=lambda args: _revoke(args, api_call))


def _list(args: argparse.Namespace, api_call: ApiCall) -> int:
    params: dict[str, Any] = {"limit": args.limit, "active": args.active}
    grants = api_call(args, "GET", "/api/grants", params=params)["grants"]
    if args.json:
        print(json.dumps(grants, indent=2))
        return 0
    if not grants:
        print("no grants")
        return 0
    print(
        f"{'id':<30}  {'state':<8}  {'agent':<14}  {'tool':<24}  {'scope':<9}  {'used':>7}  {'expires':<20}  by"
    )
    for grant in grants:
        used = f"{grant['used_calls']}/{grant['max_calls']}"
        print(
            f"{grant['id']:<30}  {grant['state']:<8}  {grant['agent']:<14}  {grant['tool']:<24}  "
            f"{grant['scope']:<9}  {used:>7}  {grant['expires_at'][:19]:<20}  {', '.join(grant['created_by'])}"
        )
    return 0


def _revoke(args: argparse.Namespace, api_call: ApiCall) -> int:
    grant = api_call(args, "POST", f"/api/grants/{args.id}/revoke")
    if grant["revoked"]:
        print(f"{grant['id']}: revoked after {grant['used_calls']} of {grant['max_calls']} calls")
    else:
        print(f"{grant['id']}: already revoked by {grant['revoked_by']} at {grant['revoked_at']}")
    return 0
