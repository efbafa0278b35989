"""Listing the upstreams' tools for the commands that judge them (``broker policy``,
``broker tools scan``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from broker.cli.common import fail
from broker.config.errors import ConfigError
from broker.config.settings import load_settings


def add_upstream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", help="an mcpServers JSON file naming the upstreams")
    parser.add_argument("--config", help="or: a broker configuration file (its servers are used)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the upstreams")


def scan_upstreams(args: argparse.Namespace) -> Any:
    from broker.catalogue.scan import scan_servers
    from broker.proxy.upstream.spec import ServerConfigError, load_servers_text

    environ = dict(os.environ)
    if args.servers is None and args.config is None:
        fail("name the upstreams with --servers FILE (an mcpServers file) or --config broker.yaml")
    try:
        if args.servers is not None:
            text = Path(args.servers).read_text(encoding="utf-8")
            servers = load_servers_text(text, source=args.servers, environ=environ)
        else:
            from broker.proxy.upstream.spec import parse_servers

            settings = load_settings(Path(args.config), environ=environ)
            servers = parse_servers(settings.servers_document, environ=environ)
    except OSError as exc:
        fail(f"cannot read {args.servers}: {exc.strerror or exc}")
    except (ServerConfigError, ConfigError) as exc:
        fail(str(exc))
    result = asyncio.run(scan_servers(servers, environ=environ, timeout=args.timeout))
    for server, reason in sorted(result.failures.items()):
        print(f"broker: warning: upstream '{server}' could not be listed: {reason}", file=sys.stderr)
    if not result.tools and result.failures:
        fail("no upstream could be listed")
    return result
