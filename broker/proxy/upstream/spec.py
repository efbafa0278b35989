"""Which MCP servers sit behind the gateway, read from the ``mcpServers`` format.

The format is the one Claude Desktop, Cursor and Claude Code already use::

    {"mcpServers": {
        "exchange": {"command": "python", "args": ["-m", "x"], "env": {"K": "V"}, "cwd": "/srv"},
        "docs": {"url": "https://host/mcp", "headers": {"Authorization": "Bearer ${DOCS_TOKEN}"}},
        "legacy": {"url": "https://host/sse", "type": "sse"}}}

``type`` (or its alias ``transport``) picks the transport; without it a ``command`` means
stdio, a URL whose path ends in ``/sse`` means the legacy HTTP+SSE transport and any other
URL means streamable HTTP. ``${VAR}`` (or ``${VAR:-default}``) in command, args, env, cwd,
url and headers expands from the environment mapping the caller passes in; a variable that
is not defined and has no default is an error. Keys this module does not know (other
clients' extras such as ``autoApprove``) are ignored.

HTTP upstreams (streamable HTTP and SSE alike) take the broker's own keys beside ``url``: ``proxy``, ``ca_bundle``,
``client_cert`` and ``client_key`` (`broker.proxy.upstream.credentials.network`), and ``auth``
and ``agent_headers`` (`broker.proxy.upstream.credentials.settings`); all are checked here, at
startup, and an error names the server and key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from broker.proxy.upstream.credentials.network import NetworkConfigError, UpstreamNetwork, upstream_network
from broker.proxy.upstream.credentials.settings import CredentialsConfigError, UpstreamAuth, upstream_auth


class ServerConfigError(ValueError):
    """The server configuration cannot be used; the message names the server and key."""


@dataclass(frozen=True)
class StdioServer:
    name: str
    command: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None


@dataclass(frozen=True)
class HttpServer:
    name: str
    url: str
    headers: Mapping[str, str]
    network: UpstreamNetwork | None = None
    """Proxy and TLS settings (`broker.proxy.upstream.credentials.network`); None: direct, system CAs."""
    auth: UpstreamAuth | None = None
    """The broker's token and per-agent headers (`broker.proxy.upstream.credentials`); None: none."""


@dataclass(frozen=True)
class SseServer:
    name: str
    url: str
    headers: Mapping[str, str]
    network: UpstreamNetwork | None = None
    auth: UpstreamAuth | None = None
    """As `HttpServer.auth`: the GET stream and every POST carry the same credentials."""


ServerSpec = StdioServer | HttpServer | SseServer

QUALIFIER_SEPARATOR = "__"
"""Joins server and tool name when several servers are configured, so server names may not contain it."""

_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRANSPORTS = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamableHttp": "http",
    "sse": "sse",
}


def load_servers_text(text: str, *, source: str, environ: Mapping[str, str]) -> dict[str, ServerSpec]:
    """Parse a JSON document in the ``mcpServers`` format; `source` (a file name) prefixes errors."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ServerConfigError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ServerConfigError(f"{source}: expected a JSON object with an 'mcpServers' key")
    try:
        return parse_servers(document, environ=environ)
    except ServerConfigError as exc:
        raise ServerConfigError(f"{source}: {exc}") from None


def parse_servers(document: Mapping[str, Any], *, environ: Mapping[str, str]) -> dict[str, ServerSpec]:
    servers = document.get("mcpServers")
    if not isinstance(servers, Mapping):
        raise ServerConfigError("expected an 'mcpServers' object mapping server names to their settings")
    parsed: dict[str, ServerSpec] = {}
    for name, entry in servers.items():
        _check_server_name(name)
        if not isinstance(entry, Mapping):
            raise ServerConfigError(f"server '{name}': expected an object, got {_json_type(entry)}")
        parsed[name] = _parse_server(name, entry, environ)
    return parsed


def _check_server_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ServerConfigError("server names must be non-empty strings")
    if not _SERVER_NAME.fullmatch(name):
        raise ServerConfigError(f"server '{name}': names may only contain letters, digits, '_' and '-'")
    if QUALIFIER_SEPARATOR in name:
        raise ServerConfigError(
            f"server '{name}': names may not contain '{QUALIFIER_SEPARATOR}', "
            "which separates server and tool in exposed tool names"
        )


def _parse_server(name: str, entry: Mapping[str, Any], environ: Mapping[str, str]) -> ServerSpec:
    fields = _Fields(name, entry, environ)
    transport = _transport_of(fields)
    if transport == "stdio":
        for key in ("url", "proxy", "ca_bundle", "client_cert", "client_key", "auth", "agent_headers"):
            if key in entry:
                raise ServerConfigError(f"server '{name}': '{key}' does not apply to a stdio server")
        command = fields.string("command")
        if command is None or not command:
            raise ServerConfigError(f"server '{name}': a stdio server needs a non-empty 'command'")
        return StdioServer(
            name=name,
            command=command,
            args=fields.string_list("args"),
            env=fields.string_map("env"),
            cwd=fields.string("cwd"),
        )
    for key in ("command", "args", "env", "cwd"):
        if key in entry:
            raise ServerConfigError(f"server '{name}': '{key}' does not apply to an HTTP server")
    url = fields.string("url")
    if url is None:
        raise ServerConfigError(f"server '{name}': an HTTP server needs a 'url'")
    _check_url(name, url)
    headers = fields.string_map("headers")
    network = _network_of(fields, url)
    try:
        auth = upstream_auth(
            entry, headers=headers, agent_headers=fields.string_map("agent_headers"), expand=fields.expand
        )
    except CredentialsConfigError as exc:
        raise ServerConfigError(f"server '{name}': {exc}") from None
    if transport == "sse":
        return SseServer(name=name, url=url, headers=headers, network=network, auth=auth)
    return HttpServer(name=name, url=url, headers=headers, network=network, auth=auth)


def _network_of(fields: _Fields, url: str) -> UpstreamNetwork | None:
    try:
        return upstream_network(
            url,
            proxy=fields.string("proxy"),
            ca_bundle=fields.string("ca_bundle"),
            client_cert=fields.string("client_cert"),
            client_key=fields.string("client_key"),
            environ=fields.environ,
        )
    except NetworkConfigError as exc:
        raise ServerConfigError(f"server '{fields.server}': {exc}") from None


def _transport_of(fields: _Fields) -> str:
    declared = {key: fields.string(key) for key in ("type", "transport") if key in fields.entry}
    chosen = {_transport_name(fields.server, key, value) for key, value in declared.items()}
    if len(chosen) > 1:
        raise ServerConfigError(f"server '{fields.server}': 'type' and 'transport' disagree")
    if chosen:
        return chosen.pop()
    has_command, has_url = "command" in fields.entry, "url" in fields.entry
    if has_command and has_url:
        raise ServerConfigError(f"server '{fields.server}': give either 'command' or 'url', not both")
    if has_command:
        return "stdio"
    if has_url:
        url = fields.string("url") or ""
        return "sse" if urlsplit(url).path.rstrip("/").endswith("/sse") else "http"
    raise ServerConfigError(f"server '{fields.server}': needs a 'command' (stdio) or a 'url' (HTTP)")


def _transport_name(server: str, key: str, value: str | None) -> str:
    transport = _TRANSPORTS.get(value or "")
    if transport is None:
        known = ", ".join(repr(name) for name in _TRANSPORTS)
        raise ServerConfigError(f"server '{server}': '{key}' is {value!r}; expected one of {known}")
    return transport


def _check_url(server: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerConfigError(f"server '{server}': 'url' must be an http:// or https:// URL, got {url!r}")


class _Fields:
    """Typed, variable-expanded access to one server entry, with errors naming the key."""

    def __init__(self, server: str, entry: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self.server = server
        self.entry = entry
        self.environ = environ

    def string(self, key: str) -> str | None:
        value = self.entry.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._error(key, f"expected a string, got {_json_type(value)}")
        return self.expand(key, value)

    def string_list(self, key: str) -> tuple[str, ...]:
        values = self.entry.get(key)
        if values is None:
            return ()
        if not isinstance(values, list):
            raise self._error(key, f"expected a list of strings, got {_json_type(values)}")
        expanded = []
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self._error(f"{key}[{index}]", f"expected a string, got {_json_type(value)}")
            expanded.append(self.expand(f"{key}[{index}]", value))
        return tuple(expanded)

    def string_map(self, key: str) -> dict[str, str]:
        values = self.entry.get(key)
        if values is None:
            return {}
        if not isinstance(values, Mapping):
            raise self._error(key, f"expected an object of strings, got {_json_type(values)}")
        expanded = {}
        for name, value in values.items():
            if not isinstance(value, str):
                raise self._error(f"{key}.{name}", f"expected a string, got {_json_type(value)}")
            expanded[name] = self.expand(f"{key}.{name}", value)
        return expanded

    def expand(self, key: str, value: str) -> str:
        if "${" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            variable, has_default, default = match.group(1).partition(":-")
            if not _VARIABLE_NAME.fullmatch(variable):
                raise self._error(key, f"'${{{match.group(1)}}}' is not a valid variable reference")
            found = self.environ.get(variable)
            if found is not None:
                return found
            if has_default:
                return default
            raise self._error(key, f"references undefined environment variable '{variable}'")

        expanded = _PLACEHOLDER.sub(substitute, value)
        if "${" in _PLACEHOLDER.sub("", value):
            raise self._error(key, "has an unterminated '${'")
        return expanded

    def _error(self, key: str, problem: str) -> ServerConfigError:
        return ServerConfigError(f"server '{self.server}': '{key}' {problem}")


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case Mapping():
            return "an object"
    return type(value).__name__
