"""Reading the mcpServers format."""

from __future__ import annotations

from typing import Any

import pytest

from broker.proxy.upstream.spec import (
    HttpServer,
    ServerConfigError,
    SseServer,
    StdioServer,
    load_servers_text,
    parse_servers,
)

ENVIRON = {"DOCS_TOKEN": "t0ken", "HOME": "/home/ada", "EMPTY": ""}


def parse(servers: dict[str, Any]) -> dict[str, Any]:
    return dict(parse_servers({"mcpServers": servers}, environ=ENVIRON))


def test_the_familiar_example() -> None:
    text = """{"mcpServers": {
        "exchange": {"command": "python", "args": ["-m", "x", "--home=${HOME}"], "env": {"K": "V"}, "cwd": "/srv"},
        "docs": {"url": "http://host/mcp", "headers": {"Authorization": "Bearer ${DOCS_TOKEN}"}},
        "legacy": {"url": "http://host/sse", "type": "sse"}}}"""
    assert load_servers_text(text, source="servers.json", environ=ENVIRON) == {
        "exchange": StdioServer("exchange", "python", ("-m", "x", "--home=/home/ada"), {"K": "V"}, "/srv"),
        "docs": HttpServer("docs", "http://host/mcp", {"Authorization": "Bearer t0ken"}),
        "legacy": SseServer("legacy", "http://host/sse", {}),
    }


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ({"command": "x"}, StdioServer),
        ({"url": "https://host/mcp"}, HttpServer),
        ({"url": "https://host/sse"}, SseServer),
        ({"url": "https://host/sse/"}, SseServer),
        ({"url": "https://host/sse?key=1"}, SseServer),
        ({"url": "https://host/ssel"}, HttpServer),
        ({"url": "https://host/sse", "type": "http"}, HttpServer),
        ({"url": "https://host/x", "type": "streamable-http"}, HttpServer),
        ({"url": "https://host/x", "type": "streamableHttp"}, HttpServer),
        ({"url": "https://host/x", "transport": "sse"}, SseServer),
        ({"url": "https://host/x", "type": "sse", "transport": "sse"}, SseServer),
        ({"command": "x", "type": "stdio"}, StdioServer),
    ],
)
def test_transport_is_declared_or_inferred(entry: dict[str, Any], kind: type) -> None:
    assert isinstance(parse({"s": entry})["s"], kind)


def test_defaults_and_ignored_extras() -> None:
    assert parse({"s": {"command": "x", "autoApprove": ["a"], "disabled": False}}) == {
        "s": StdioServer("s", "x", (), {}, None)
    }


def test_variables_expand_with_defaults() -> None:
    [server] = parse(
        {
            "s": {
                "url": "https://${MISSING:-fallback.example}/mcp",
                "headers": {"X": "${EMPTY}|${DOCS_TOKEN}|$HOME"},
            }
        }
    ).values()
    assert server == HttpServer("s", "https://fallback.example/mcp", {"X": "|t0ken|$HOME"})


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ({"": {"command": "x"}}, "server names must be non-empty"),
        ({"my server": {"command": "x"}}, "server 'my server': names may only contain"),
        ({"a__b": {"command": "x"}}, "server 'a__b': names may not contain '__'"),
        ({"s": ["command"]}, "server 's': expected an object, got a list"),
        ({"s": {}}, "server 's': needs a 'command' (stdio) or a 'url' (HTTP)"),
        (
            {"s": {"command": "x", "url": "http://h/mcp"}},
            "server 's': give either 'command' or 'url', not both",
        ),
        ({"s": {"command": "x", "type": "websocket"}}, "server 's': 'type' is 'websocket'; expected one of"),
        (
            {"s": {"url": "http://h/x", "type": "sse", "transport": "http"}},
            "server 's': 'type' and 'transport' disagree",
        ),
        ({"s": {"type": "stdio", "url": "http://h/x"}}, "server 's': 'url' does not apply to a stdio server"),
        ({"s": {"type": "stdio"}}, "server 's': a stdio server needs a non-empty 'command'"),
        ({"s": {"command": ""}}, "server 's': a stdio server needs a non-empty 'command'"),
        ({"s": {"command": 3}}, "server 's': 'command' expected a string, got a number"),
        (
            {"s": {"command": "x", "args": "-v"}},
            "server 's': 'args' expected a list of strings, got a string",
        ),
        ({"s": {"command": "x", "args": ["-v", 2]}}, "server 's': 'args[1]' expected a string, got a number"),
        (
            {"s": {"command": "x", "env": {"PORT": 80}}},
            "server 's': 'env.PORT' expected a string, got a number",
        ),
        (
            {"s": {"command": "x", "env": ["A=1"]}},
            "server 's': 'env' expected an object of strings, got a list",
        ),
        ({"s": {"type": "http", "command": "x"}}, "server 's': 'command' does not apply to an HTTP server"),
        ({"s": {"type": "sse"}}, "server 's': an HTTP server needs a 'url'"),
        (
            {"s": {"url": "ftp://h/mcp"}},
            "server 's': 'url' must be an http:// or https:// URL, got 'ftp://h/mcp'",
        ),
        ({"s": {"url": "http:///mcp"}}, "server 's': 'url' must be an http:// or https:// URL"),
        (
            {"s": {"url": "http://h/x", "headers": {"A": None}}},
            "server 's': 'headers.A' expected a string, got null",
        ),
        (
            {"docs": {"url": "http://h/x", "headers": {"Authorization": "Bearer ${NOPE}"}}},
            "server 'docs': 'headers.Authorization' references undefined environment variable 'NOPE'",
        ),
        (
            {"s": {"command": "x", "args": ["${1BAD}"]}},
            "server 's': 'args[0]' '${1BAD}' is not a valid variable",
        ),
        (
            {"s": {"command": "x", "env": {"A": "${DOCS_TOKEN"}}},
            "server 's': 'env.A' has an unterminated '${'",
        ),
        (
            {"s": {"command": "${NOPE}"}},
            "server 's': 'command' references undefined environment variable 'NOPE'",
        ),
    ],
)
def test_configuration_errors_name_server_and_key(servers: dict[str, Any], message: str) -> None:
    with pytest.raises(ServerConfigError) as raised:
        parse(servers)
    assert str(raised.value).startswith(message)


def test_the_document_needs_an_mcp_servers_object() -> None:
    with pytest.raises(ServerConfigError, match="expected an 'mcpServers' object"):
        parse_servers({"servers": {}}, environ={})
    with pytest.raises(ServerConfigError, match="expected an 'mcpServers' object"):
        parse_servers({"mcpServers": []}, environ={})
    assert parse_servers({"mcpServers": {}}, environ={}) == {}


def test_text_errors_name_the_source() -> None:
    with pytest.raises(ServerConfigError, match=r"^servers\.json: not valid JSON: "):
        load_servers_text('{"mcpServers": {', source="servers.json", environ={})
    with pytest.raises(ServerConfigError, match=r"^servers\.json: expected a JSON object"):
        load_servers_text("[]", source="servers.json", environ={})
    with pytest.raises(ServerConfigError, match=r"^servers\.json: server 's': needs a 'command'"):
        load_servers_text('{"mcpServers": {"s": {}}}', source="servers.json", environ={})
