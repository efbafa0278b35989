"""``broker policy check|explain|init|diff|convert``: policies judged offline, alone or against
the upstreams' tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from broker.cli.common import EXIT_USAGE, Parser, fail
from broker.cli.convert import register as register_convert
from broker.cli.upstreams import add_upstream_options, scan_upstreams
from broker.policy import PolicyError
from broker.policy.formats import Format
from broker.policy.loader import load_policy_with_format
from broker.policy.risk_defaults import RISK_LEVELS

EXIT_DIFFERENCES = 1
"""`policy diff`: some tool's decisions change (0: none do; 2: an error)."""


def register(commands: Any) -> None:
    policy = commands.add_parser("policy", help="check and explain policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, parser_class=Parser)
    check = policy_commands.add_parser("check", help="validate policy files (exit 2 on errors)")
    check.add_argument("files", nargs="+")
    add_upstream_options(check)
    check.set_defaults(handler=_cmd_policy_check)
    explain = policy_commands.add_parser("explain", help="show the decision for one tool call")
    explain.add_argument("file")
    explain.add_argument("tool")
    explain.add_argument("--agent")
    explain.add_argument("--server", help="upstream server name (for server__tool rules)")
    explain.add_argument("--args", help="call arguments as a JSON object")
    explain.add_argument(
        "--risk",
        choices=RISK_LEVELS,
        help="the tool's catalogue rating (see 'broker tools scan'), for the policy's risk_defaults",
    )
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(handler=_cmd_policy_explain)
    init = policy_commands.add_parser("init", help="print a starting policy for the upstreams' tools")
    add_upstream_options(init)
    init.set_defaults(handler=_cmd_policy_init)
    diff = policy_commands.add_parser(
        "diff",
        help="which tools change decision between two policies (exit 1 if any, 0 if none, 2 on errors)",
    )
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--agent", help="judge the policies as they apply to this agent")
    diff.add_argument("--json", action="store_true")
    add_upstream_options(diff)
    diff.set_defaults(handler=_cmd_policy_diff)
    register_convert(policy_commands)


def _cmd_policy_check(args: argparse.Namespace) -> int:
    failed = False
    for name in args.files:
        try:
            policy, found = load_policy_with_format(Path(name).read_bytes(), source=name)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            failed = True
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            failed = True
        else:
            problems = _editable_problems(args, policy, name)
            for problem in problems:
                print(problem, file=sys.stderr)
            failed = failed or bool(problems)
            if not problems:
                print(
                    f"{name}: ok (revision {policy.revision}, {len(policy.rules)} rules, "
                    f"default {policy.default.value}; {found.title} format)"
                )
                for rule in policy.rules:
                    for limit in rule.decision.limits:
                        print(f"  {rule.name}: limit {limit.describe()}")
    return EXIT_USAGE if failed else 0


def _editable_problems(args: argparse.Namespace, policy: Any, name: str) -> list[str]:
    """With --servers/--config: each rule's editable arguments against the tools' inputSchemas."""
    if args.servers is None and args.config is None:
        return []
    from broker.policy.edits import ToolArguments, schema_properties, unknown_fields

    if not hasattr(args, "scanned"):
        args.scanned = scan_upstreams(args)
    tools = [
        ToolArguments(tool.server, tool.name, schema_properties(tool.definition.get("inputSchema")))
        for tool in args.scanned.tools
    ]
    return [f"{name}:{line}: {problem}" for line, problem in unknown_fields(policy, tools)]


def _cmd_policy_explain(args: argparse.Namespace) -> int:
    policy, found = _load_policy_file_with_format(args.file)
    arguments: dict[str, Any] | None = None
    if args.args is not None:
        try:
            parsed = json.loads(args.args)
        except json.JSONDecodeError as exc:
            fail(f"--args is not valid JSON: {exc.msg} at column {exc.colno}")
        if not isinstance(parsed, dict):
            fail("--args must be a JSON object, e.g. '{\"quantity\": 5}'")
        arguments = parsed
    explanation = policy.explain(
        args.tool, server=args.server, agent=args.agent, arguments=arguments, risk=args.risk
    )
    if args.json:
        decision = explanation.decision
        print(
            json.dumps(
                {
                    "tool": args.tool,
                    "format": found.value,
                    "action": decision.action.value,
                    "rule": decision.rule,
                    "reason": decision.reason,
                    "policy_revision": decision.revision,
                    "listed": policy.is_listed(
                        args.tool, server=args.server, agent=args.agent, risk=args.risk
                    ),
                },
                indent=2,
            )
        )
    else:
        print(f"policy:    {args.file} ({found.title} format)")
        print(explanation.render())
    return 0


def _load_policy_file(name: str) -> Any:
    return _load_policy_file_with_format(name)[0]


def _load_policy_file_with_format(name: str) -> tuple[Any, Format]:
    try:
        return load_policy_with_format(Path(name).read_bytes(), source=name)
    except OSError as exc:
        fail(f"{name}: cannot read: {exc.strerror or exc}")
    except PolicyError as exc:
        fail(str(exc))


def _cmd_policy_init(args: argparse.Namespace) -> int:
    from broker.catalogue import StarterPolicyError, classify_tools, starter_policy_yaml

    result = scan_upstreams(args)
    try:
        text = starter_policy_yaml(classify_tools(result.tools), multiple_servers=result.multiple_servers)
    except StarterPolicyError as exc:
        fail(str(exc))
    sys.stdout.write(text)
    return 0


def _cmd_policy_diff(args: argparse.Namespace) -> int:
    from broker.catalogue import diff_policies, render_diff

    old = _load_policy_file(args.old)
    new = _load_policy_file(args.new)
    result = scan_upstreams(args)
    changes = diff_policies(old, new, result.tools, agent=args.agent)
    if args.json:
        print(json.dumps([change.to_dict() for change in changes], indent=2))
    else:
        print(render_diff(changes))
    # Like diff(1): a CI step can fail a pull request whose policy edit changes decisions
    return EXIT_DIFFERENCES if changes else 0
