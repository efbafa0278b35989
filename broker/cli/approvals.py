"""``broker approvals list|show|approve|deny``: held calls, through the approvals API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli.api import add_api_options, api_call
from broker.cli.common import Parser, fail
from broker.cli.grants import add_grant_options, grant_body, grant_note


def register(commands: Any) -> None:
    approvals = commands.add_parser("approvals", help="list, inspect and decide held calls")
    approvals_commands = approvals.add_subparsers(
        dest="approvals_command", required=True, parser_class=Parser
    )
    listing = approvals_commands.add_parser("list", help="approvals, newest first")
    listing.add_argument(
        "--status",
        default="pending",
        choices=[
            "pending",
            "approved",
            "released",
            "completed",
            "failed",
            "denied",
            "expired",
            "cancelled",
            "outcome_unknown",
            "all",
        ],
    )
    listing.add_argument("--agent")
    listing.add_argument("--tool")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    add_api_options(listing)
    listing.set_defaults(handler=_cmd_approvals_list)
    show = approvals_commands.add_parser("show", help="one approval with its audit trail")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    add_api_options(show)
    show.set_defaults(handler=_cmd_approvals_show)
    for verb in ("approve", "deny"):
        decide = approvals_commands.add_parser(verb, help=f"{verb} a pending approval")
        decide.add_argument("id")
        decide.add_argument("--reason")
        if verb == "approve":
            decide.add_argument(
                "--set",
                action="append",
                metavar="NAME=VALUE",
                help="approve with edits: change an editable argument (VALUE is JSON: 100, true, '\"text\"')",
            )
            add_grant_options(decide)
        add_api_options(decide)
        decide.set_defaults(handler=_cmd_approvals_decide)


def _cmd_approvals_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status != "all":
        params["status"] = args.status
    if args.agent:
        params["agent"] = args.agent
    if args.tool:
        params["tool"] = args.tool
    approvals = api_call(args, "GET", "/api/approvals", params=params)["approvals"]
    if args.json:
        print(json.dumps(approvals, indent=2))
        return 0
    if not approvals:
        print("no approvals")
        return 0
    print(
        f"{'id':<26}  {'status':<15}  {'agent':<14}  {'tool':<32}  {'risk':<8}  {'created':<20}  "
        f"{'expires':<20}  arguments"
    )
    for item in approvals:
        risk = ((item.get("context") or {}).get("tool") or {}).get("risk") or "-"
        print(
            f"{item['id']:<26}  {item['status']:<15}  {item['agent'][:14]:<14}  {item['tool'][:32]:<32}  "
            f"{risk:<8}  {item['created_at'][:19]:<20}  {item['expires_at'][:19]:<20}  "
            f"{_fields_preview(item.get('fields') or [])}"
            + (f"  {item['progress']}" if item.get("progress") else "")
        )
    return 0


def _fields_preview(fields: list[dict[str, Any]], limit: int = 80) -> str:
    """The first arguments in reading order, on one line: short values whole, others by size."""
    parts = []
    for field in fields:
        value = field["text"] if field["shape"] == "short" else f"({field['size']:,} characters)"
        parts.append(f"{field['name']}={value}")
    line = " ".join(parts)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _print_fields(fields: list[dict[str, Any]]) -> None:
    """Arguments in reading order (decisive ones marked *), multi-line values as indented blocks."""
    if not fields:
        print(f"{'arguments':>17}: (none)")
        return
    print(f"{'arguments':>17}: (* = looked at by the rule that held the call)")
    for field in fields:
        mark = "*" if field["decisive"] else " "
        if field["shape"] == "short":
            print(f"{'':>17}  {mark} {field['name']}: {field['text']}")
            continue
        print(f"{'':>17}  {mark} {field['name']}: |  ({field['size']:,} characters)")
        for line in field["text"].split("\n"):
            print(f"{'':>17}        {line}")


def _print_context(context: dict[str, Any]) -> None:
    tool = context.get("tool") or {}
    if tool.get("risk"):
        reasons = tool.get("reasons") or []
        why = f" ({reasons[0]})" if reasons else ""
        print(f"{'risk':>17}: {tool['category'].replace('_', ' ')}, {tool['risk']}{why}")
    elif tool and not tool.get("listed"):
        print(f"{'risk':>17}: unknown (the upstream does not list this tool now)")
    if tool.get("description"):
        print(f"{'description':>17}: {' '.join(tool['description'].split())[:300]}")
    hold = context.get("hold") or {}
    for condition in hold.get("conditions") or ():
        print(f"{'held because':>17}: {condition['text']}")
    if hold.get("policy_changed"):
        print(f"{'policy':>17}: {hold['policy_changed']}")
    waiting = context.get("waiting")
    if waiting:
        print(f"{'waiting':>17}: {waiting['summary']}")
    for other in context.get("recent") or ():
        by = f" by {other['decided_by']}" if other.get("decided_by") else ""
        print(
            f"{'earlier decision':>17}: {other['status']}{by} at {(other.get('decided_at') or '')[:19]} ({other['id']})"
        )


def _cmd_approvals_show(args: argparse.Namespace) -> int:
    approval = api_call(args, "GET", f"/api/approvals/{args.id}")
    if args.json:
        print(json.dumps(approval, indent=2))
        return 0
    for key in (
        "id",
        "status",
        "agent",
        "server",
        "tool",
        "rule",
        "rule_reason",
        "policy_revision",
        "arguments_sha256",
        "created_at",
        "expires_at",
        "decided_by",
        "decided_via",
        "decided_at",
        "decision_reason",
        "progress",
        "guidance",
    ):
        if approval.get(key) is not None:
            print(f"{key:>17}: {approval[key]}")
    for found in approval.get("idempotency_ids") or ():
        print(f"{'idempotency id':>17}: {found['path']}={found['value']}")
    _print_context(approval.get("context") or {})
    _print_fields(approval.get("fields") or [])
    print("            audit:")
    for entry in approval["audit"]:
        print(
            f"                   {entry['seq']:>5} {entry['at'][:19]} {entry['event']:<10} {entry['actor']}"
        )
    return 0


def _cmd_approvals_decide(args: argparse.Namespace) -> int:
    verb = "approve" if args.approvals_command == "approve" else "deny"
    body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
    edits = _edits(getattr(args, "set", None) or ())
    if edits:
        body["edits"] = edits
    if verb == "approve":
        body.update(grant_body(args))
    approval = api_call(args, "POST", f"/api/approvals/{args.id}/{verb}", json=body)
    if approval.get("changes") and edits:
        shown = ", ".join(
            f"{change['field']} {json.dumps(change.get('from'))} -> {json.dumps(change['to'])}"
            for change in approval["changes"]
        )
        print(f"{approval['id']}: arguments changed: {shown}")
    if approval["status"] == "pending" and approval.get("progress"):
        print(f"{approval['id']}: vote recorded, still pending: {approval['progress']}")
    else:
        print(f"{approval['id']}: {approval['status']} by {approval['decided_by']}{grant_note(approval)}")
    return 0


def _edits(assignments: Any) -> dict[str, Any]:
    """``--set quantity=100 --set note=hello``: each value is read as JSON (100 stays a number,
    ``'"100"'`` is a string), and taken as text when it is not JSON."""
    edits: dict[str, Any] = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals or not name:
            fail(f"--set takes NAME=VALUE (the value as JSON), got {assignment!r}")
        try:
            edits[name] = json.loads(text)
        except json.JSONDecodeError:
            edits[name] = text
    return edits
