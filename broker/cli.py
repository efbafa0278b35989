"""The `broker` command line. Usage errors and bad input exit with status 2 and a message."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from broker.cli_convert import register as register_convert
from broker.cli_grants import add_grant_options, grant_body, grant_note
from broker.cli_grants import register as register_grants
from broker.cli_pins import register as register_pins
from broker.config.demo import demo_settings
from broker.config.errors import ConfigError
from broker.config.settings import BrokerSettings, load_settings
from broker.policy import PolicyError, load_policy
from broker.policy.risk_defaults import RISK_LEVELS
from broker.proxy.decision_log import DECISION_LOGGER, BufferedLineSink

EXIT_USAGE = 2
EXIT_DIFFERENCES = 1
"""`policy diff`: some tool's decisions change (0: none do; 2: an error)."""


class CliError(Exception):
    """A problem with what the user asked for; printed without a traceback, exit status 2."""


def _fail(message: str) -> NoReturn:
    raise CliError(message)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Decision lines are JSON already: no prefix, so log shippers can parse them as they are.
    decisions = logging.getLogger(DECISION_LOGGER)
    decision_handler = logging.StreamHandler(sys.stderr)
    decision_handler.setFormatter(logging.Formatter("%(message)s"))
    decisions.handlers[:] = [decision_handler]
    decisions.propagate = False
    # Every decision is logged whatever the verbosity: --log-level quiets diagnostics, not the audit trail.
    decisions.setLevel(logging.INFO)


def _settings(args: argparse.Namespace) -> BrokerSettings:
    environ = dict(os.environ)
    if args.config is not None:
        if args.demo:
            _fail("--config and --demo exclude each other")
        try:
            # --stdio runs in the agent's environment: approver and Slack secrets are not there
            settings = load_settings(Path(args.config), environ=environ, agent_side=args.stdio)
        except ConfigError as exc:
            _fail(str(exc))
        except (ValueError, RecursionError) as exc:
            # What the config parser does not report with a position (an integer too long to
            # convert, nesting too deep) still ends in a message, not a traceback.
            _fail(f"{args.config}: cannot be loaded: {exc}")
    else:
        if args.host is not None and not _is_loopback(args.host):
            # The demo's sign-in (demo/demo) and approver token are printed in the README
            _fail("--demo listens on localhost only: its password and approver token are public")
        state_dir = Path(environ.get("BROKER_STATE_DIR", ".")).resolve()
        settings = demo_settings(environ=environ, state_dir=state_dir)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    return settings


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_demo_calls(args: argparse.Namespace) -> int:
    from broker.demo.agent import DemoAgentError, make_calls

    url = args.url or os.environ.get("BROKER_URL", "http://127.0.0.1:8765")
    try:
        asyncio.run(make_calls(url, sys.stdout))
    except DemoAgentError as exc:
        _fail(str(exc))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from broker.app import Broker
    from broker.proxy.upstream.spec import ServerConfigError

    configure_logging(args.log_level)
    settings = _settings(args)
    try:
        broker = Broker(settings, environ=dict(os.environ), decision_sink=BufferedLineSink(sys.stderr.buffer))
    except PolicyError as exc:
        _fail(f"refusing to start: the policy is invalid\n{exc}")
    except ServerConfigError as exc:
        _fail(f"refusing to start: {exc}")
    except OSError as exc:
        _fail(f"refusing to start: {exc}")
    if args.stdio:
        return asyncio.run(_serve_stdio(broker, args.agent or settings.stdio_agent))
    import uvicorn

    _check_port_free(settings.host, settings.port)
    if args.config is None:
        from broker.demo.agent import DEMO_APPROVER_TOKEN

        log = logging.getLogger("broker")
        url = f"http://{settings.host}:{settings.port}"
        url_option = "" if settings.port == 8765 else f" --url {url}"
        log.warning("demo mode: built-in exchange upstream, anonymous agents allowed at %s/mcp", url)
        log.warning("demo mode: web inbox at %s/ (sign in as demo, password demo)", url)
        log.warning("demo mode: approver token for the API and 'broker approvals': %s", DEMO_APPROVER_TOKEN)
        log.warning(
            "demo mode: make an allowed, a denied and a held call with: broker demo calls%s", url_option
        )
    from broker.net.limits import limited_protocol

    config = uvicorn.Config(
        broker.asgi(),
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        access_log=False,
        # The drain's grace runs inside uvicorn's graceful shutdown
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds) + SHUTDOWN_MARGIN_SECONDS,
        # The web inbox decides itself which proxies it believes (web.trusted_proxies); uvicorn's
        # rewriting of the client address from X-Forwarded-For would hide the real peer from it.
        proxy_headers=False,
        # Deadlines for slow requests and a cap per client address (settings.limits); uvicorn's
        # own timeout_keep_alive (5 s) still closes connections left idle after a response.
        http=limited_protocol(settings.limits, exempt=settings.web.trusted_proxies),
        ws="none",
    )
    _draining_server(config, broker).run()
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Says so before start-up when the port is taken (uvicorn would log a traceback-like error
    after the upstreams had started). A race with another process remains possible and is harmless."""
    import errno
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        _fail(f"refusing to start: cannot listen on {host}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by a broker that just stopped is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _fail(f"port {port} is in use; is another broker running? choose one with --port")
            _fail(f"refusing to start: cannot listen on {host}:{port}: {exc.strerror or exc}")


SHUTDOWN_MARGIN_SECONDS = 5
"""How much longer uvicorn's graceful shutdown lasts than the drain grace: held agents are
answered at the end of the grace, then the streams still open are closed."""


def _draining_server(config: Any, broker: Any) -> Any:
    """A uvicorn server whose SIGTERM/SIGINT first starts the broker's drain (see Broker.drain)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            broker.drain_soon()
            super().handle_exit(sig, frame)

    return DrainingServer(config)


async def _serve_stdio(broker: Any, agent: str) -> int:
    from broker.proxy.stdio_endpoint import StdioEndpoint, open_stdin

    reader = await open_stdin()
    endpoint = StdioEndpoint(
        broker.gateway, agent=agent, changes=broker.changes, session_id=f"stdio:{os.getpid()}"
    )
    async with broker.running():
        await endpoint.serve(reader, sys.stdout.buffer)
    return 0


def _cmd_policy_check(args: argparse.Namespace) -> int:
    failed = False
    for name in args.files:
        try:
            policy = load_policy(Path(name).read_bytes(), source=name)
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
                    f"{name}: ok (revision {policy.revision}, {len(policy.rules)} rules, default {policy.default.value})"
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
        args.scanned = _scan(args)
    tools = [
        ToolArguments(tool.server, tool.name, schema_properties(tool.definition.get("inputSchema")))
        for tool in args.scanned.tools
    ]
    return [f"{name}:{line}: {problem}" for line, problem in unknown_fields(policy, tools)]


def _cmd_policy_explain(args: argparse.Namespace) -> int:
    policy = _load_policy_file(args.file)
    arguments: dict[str, Any] | None = None
    if args.args is not None:
        try:
            parsed = json.loads(args.args)
        except json.JSONDecodeError as exc:
            _fail(f"--args is not valid JSON: {exc.msg} at column {exc.colno}")
        if not isinstance(parsed, dict):
            _fail("--args must be a JSON object, e.g. '{\"quantity\": 5}'")
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
        print(explanation.render())
    return 0


def _load_policy_file(name: str) -> Any:
    try:
        return load_policy(Path(name).read_bytes(), source=name)
    except OSError as exc:
        _fail(f"{name}: cannot read: {exc.strerror or exc}")
    except PolicyError as exc:
        _fail(str(exc))


def _scan(args: argparse.Namespace) -> Any:
    from broker.catalogue.scan import scan_servers
    from broker.proxy.upstream.spec import ServerConfigError, load_servers_text

    environ = dict(os.environ)
    if args.servers is None and args.config is None:
        _fail("name the upstreams with --servers FILE (an mcpServers file) or --config broker.yaml")
    try:
        if args.servers is not None:
            text = Path(args.servers).read_text(encoding="utf-8")
            servers = load_servers_text(text, source=args.servers, environ=environ)
        else:
            from broker.proxy.upstream.spec import parse_servers

            settings = load_settings(Path(args.config), environ=environ)
            servers = parse_servers(settings.servers_document, environ=environ)
    except OSError as exc:
        _fail(f"cannot read {args.servers}: {exc.strerror or exc}")
    except (ServerConfigError, ConfigError) as exc:
        _fail(str(exc))
    result = asyncio.run(scan_servers(servers, environ=environ, timeout=args.timeout))
    for server, reason in sorted(result.failures.items()):
        print(f"broker: warning: upstream '{server}' could not be listed: {reason}", file=sys.stderr)
    if not result.tools and result.failures:
        _fail("no upstream could be listed")
    return result


def _cmd_tools_scan(args: argparse.Namespace) -> int:
    from broker.catalogue import classify_tools, render_table, to_json

    result = _scan(args)
    classifications = classify_tools(result.tools)
    print(to_json(classifications) if args.json else render_table(classifications))
    return 0


def _cmd_policy_init(args: argparse.Namespace) -> int:
    from broker.catalogue import StarterPolicyError, classify_tools, starter_policy_yaml

    result = _scan(args)
    try:
        text = starter_policy_yaml(classify_tools(result.tools), multiple_servers=result.multiple_servers)
    except StarterPolicyError as exc:
        _fail(str(exc))
    sys.stdout.write(text)
    return 0


def _cmd_policy_diff(args: argparse.Namespace) -> int:
    from broker.catalogue import diff_policies, render_diff

    old = _load_policy_file(args.old)
    new = _load_policy_file(args.new)
    result = _scan(args)
    changes = diff_policies(old, new, result.tools, agent=args.agent)
    if args.json:
        print(json.dumps([change.to_dict() for change in changes], indent=2))
    else:
        print(render_diff(changes))
    # Like diff(1): a CI step can fail a pull request whose policy edit changes decisions
    return EXIT_DIFFERENCES if changes else 0


def _decisions_client(args: argparse.Namespace) -> Any:
    import httpx

    token = args.token or os.environ.get("BROKER_APPROVER_TOKEN")
    if not token:
        _fail("an approver token is needed: --token or BROKER_APPROVER_TOKEN")
    url = args.url or os.environ.get("BROKER_URL", "http://127.0.0.1:8765")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _api_call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    with _decisions_client(args) as http:
        try:
            response = http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            _fail(f"cannot reach the broker at {http.base_url}: {exc}")
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        _fail(f"{response.status_code}: {detail}")
    return response.json()


def _cmd_approvals_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status != "all":
        params["status"] = args.status
    if args.agent:
        params["agent"] = args.agent
    if args.tool:
        params["tool"] = args.tool
    approvals = _api_call(args, "GET", "/api/approvals", params=params)["approvals"]
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
    approval = _api_call(args, "GET", f"/api/approvals/{args.id}")
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
    approval = _api_call(args, "POST", f"/api/approvals/{args.id}/{verb}", json=body)
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
            _fail(f"--set takes NAME=VALUE (the value as JSON), got {assignment!r}")
        try:
            edits[name] = json.loads(text)
        except json.JSONDecodeError:
            edits[name] = text
    return edits


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from broker.approvals.ports import StoreUnavailable
    from broker.store.engine import create_store

    url = args.database_url or os.environ.get("BROKER_DATABASE_URL") or "sqlite:///broker.db"
    expected_head = None
    if args.expect_head is not None:
        seq, _, head_hash = args.expect_head.partition(":")
        if not seq.isdigit() or len(head_hash) != 64:
            _fail(
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
        _fail(f"cannot read the audit log: {exc}")
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


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from broker.approvals.ports import StoreUnavailable
    from broker.store.migrate import current_revision, upgrade

    url = args.database_url or os.environ.get("BROKER_DATABASE_URL") or "sqlite:///broker.db"
    try:
        asyncio.run(upgrade(url))
        revision = asyncio.run(current_revision(url))
    except StoreUnavailable as exc:
        _fail(str(exc))
    print(f"database at revision {revision}")
    return 0


MIN_PASSWORD_LENGTH = 12
"""What `hash-password` accepts at least: NIST SP 800-63B asks for 8, and a password that approves
real-money calls, stored as a hash that may leak, deserves more."""


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from getpass import getpass

    from broker.channels.web.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass("Password: ")
        if getpass("Again: ") != password:
            _fail("the two passwords differ; nothing was hashed")
    else:
        # One line from a pipe (`printf '%s' "$PW" | broker hash-password`); only the line break is dropped.
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        _fail("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        _fail(
            f"the password has {len(password)} characters; use at least {MIN_PASSWORD_LENGTH} "
            "(the inbox's password decides approvals: a short one is guessed offline from a leaked hash)"
        )
    print(hash_password(password))
    return 0


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the broker's base URL (default: $BROKER_URL or http://127.0.0.1:8765)")
    parser.add_argument("--token", help="approver token (default: $BROKER_APPROVER_TOKEN)")


def _add_upstream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", help="an mcpServers JSON file naming the upstreams")
    parser.add_argument("--config", help="or: a broker configuration file (its servers are used)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the upstreams")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="broker", description="MCP approval broker: a policy gateway for AI agents' tool calls."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument("--config", help="broker configuration file (YAML/JSON); without it: built-in demo")
    serve.add_argument(
        "--demo", action="store_true", help="embedded defaults: demo exchange upstream, SQLite"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    serve.add_argument("--agent", help="agent name for --stdio (default: the config's stdio_agent)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=_cmd_serve)

    policy = commands.add_parser("policy", help="check and explain policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    check = policy_commands.add_parser("check", help="validate policy files (exit 2 on errors)")
    check.add_argument("files", nargs="+")
    _add_upstream_options(check)
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
    _add_upstream_options(init)
    init.set_defaults(handler=_cmd_policy_init)
    diff = policy_commands.add_parser(
        "diff",
        help="which tools change decision between two policies (exit 1 if any, 0 if none, 2 on errors)",
    )
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--agent", help="judge the policies as they apply to this agent")
    diff.add_argument("--json", action="store_true")
    _add_upstream_options(diff)
    diff.set_defaults(handler=_cmd_policy_diff)
    register_convert(policy_commands)

    approvals = commands.add_parser("approvals", help="list, inspect and decide held calls")
    approvals_commands = approvals.add_subparsers(
        dest="approvals_command", required=True, parser_class=_Parser
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
    _add_api_options(listing)
    listing.set_defaults(handler=_cmd_approvals_list)
    show = approvals_commands.add_parser("show", help="one approval with its audit trail")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    _add_api_options(show)
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
        _add_api_options(decide)
        decide.set_defaults(handler=_cmd_approvals_decide)

    register_grants(commands, parser_class=_Parser, add_api_options=_add_api_options, api_call=_api_call)

    audit = commands.add_parser("audit", help="the approvals audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    verify = audit_commands.add_parser("verify", help="check the hash chain (exit 1 when it is broken)")
    verify.add_argument("--database-url", help="default: $BROKER_DATABASE_URL or sqlite:///broker.db")
    verify.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify; it must still be there",
    )
    verify.set_defaults(handler=_cmd_audit_verify)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_upgrade = db_commands.add_parser(
        "upgrade", help="apply the migrations (the broker also does on start)"
    )
    db_upgrade.add_argument("--database-url", help="default: $BROKER_DATABASE_URL or sqlite:///broker.db")
    db_upgrade.set_defaults(handler=_cmd_db_upgrade)

    tools = commands.add_parser("tools", help="inspect the upstreams' tools")
    tools_commands = tools.add_subparsers(dest="tools_command", required=True, parser_class=_Parser)
    scan = tools_commands.add_parser("scan", help="list and risk-classify every upstream tool")
    _add_upstream_options(scan)
    scan.add_argument("--json", action="store_true")
    scan.set_defaults(handler=_cmd_tools_scan)
    register_pins(tools_commands, fail=_fail)

    demo = commands.add_parser("demo", help="try the broker started with 'broker serve --demo'")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True, parser_class=_Parser)
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

    hash_command = commands.add_parser(
        "hash-password",
        help="print the scrypt hash of a password for approvers.<name>.password_hash",
        description="Reads the password from the terminal (asked twice) or one line from stdin, "
        "and prints the hash to put in the configuration.",
    )
    hash_command.set_defaults(handler=_cmd_hash_password)
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


if __name__ == "__main__":
    sys.exit(main())
