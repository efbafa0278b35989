"""``broker serve``: the broker over HTTP (uvicorn, drained on SIGTERM) or, with ``--stdio``, for
one MCP client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from broker.cli.common import fail
from broker.config.demo import demo_settings
from broker.config.errors import ConfigError
from broker.config.settings import BrokerSettings, load_settings
from broker.policy import PolicyError
from broker.proxy.decision_log import DECISION_LOGGER, BufferedLineSink


def register(commands: Any) -> None:
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
            fail("--config and --demo exclude each other")
        try:
            # --stdio runs in the agent's environment: approver and Slack secrets are not there
            settings = load_settings(Path(args.config), environ=environ, agent_side=args.stdio)
        except ConfigError as exc:
            fail(str(exc))
        except (ValueError, RecursionError) as exc:
            # What the config parser does not report with a position (an integer too long to
            # convert, nesting too deep) still ends in a message, not a traceback.
            fail(f"{args.config}: cannot be loaded: {exc}")
    else:
        if args.host is not None and not _is_loopback(args.host):
            # The demo's sign-in (demo/demo) and approver token are printed in the README
            fail("--demo listens on localhost only: its password and approver token are public")
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from broker.app import Broker
    from broker.proxy.upstream.spec import ServerConfigError

    configure_logging(args.log_level)
    settings = _settings(args)
    try:
        broker = Broker(settings, environ=dict(os.environ), decision_sink=BufferedLineSink(sys.stderr.buffer))
    except PolicyError as exc:
        fail(f"refusing to start: the policy is invalid\n{exc}")
    except ServerConfigError as exc:
        fail(f"refusing to start: {exc}")
    except OSError as exc:
        fail(f"refusing to start: {exc}")
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
        fail(f"refusing to start: cannot listen on {host}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by a broker that just stopped is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(f"port {port} is in use; is another broker running? choose one with --port")
            fail(f"refusing to start: cannot listen on {host}:{port}: {exc.strerror or exc}")


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
