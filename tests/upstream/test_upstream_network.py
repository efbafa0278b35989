"""Upstreams inside a company network: through a CONNECT proxy, NO_PROXY, a private CA and mTLS.

The upstream is the demo MCP server in its own process (over TLS with a throwaway CA where a
test needs it); the proxy is a real tunnelling proxy on a local port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from broker.proxy.upstream.base import UpstreamUnavailable
from broker.proxy.upstream.credentials.network import bypasses_proxy
from broker.proxy.upstream.http import StreamableHttpConnection
from broker.proxy.upstream.spec import HttpServer, ServerConfigError, SseServer, parse_servers
from broker.proxy.upstream.sse import SseConnection
from tests.upstream.network_support import ConnectProxy, Pki, make_pki
from tests.upstream.support import DemoHttpServer, Notifications

pytestmark = pytest.mark.anyio


def spec_for(entry: dict[str, Any], environ: dict[str, str] | None = None) -> HttpServer | SseServer:
    spec = parse_servers({"mcpServers": {"up": entry}}, environ=environ or {})["up"]
    assert isinstance(spec, HttpServer | SseServer)
    return spec


async def echo_through(spec: HttpServer | SseServer) -> str:
    connection = (
        StreamableHttpConnection(spec, Notifications())
        if isinstance(spec, HttpServer)
        else SseConnection(spec, Notifications())
    )
    try:
        with anyio.fail_after(15):
            await connection.start()
            result = await connection.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    return str(result["content"][0]["text"])


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy().running() as running:
        yield running


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[DemoHttpServer]:
    server = DemoHttpServer(
        "http",
        env={
            "DEMO_TLS_CERT": str(pki.server_cert),
            "DEMO_TLS_KEY": str(pki.server_key),
            "DEMO_TLS_CLIENT_CA": str(pki.ca),
        },
    )
    try:
        server.wait_ready_blocking()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["http", "sse"])
async def test_the_environment_proxy_carries_the_upstream_traffic(
    start_http_server: Any, proxy: ConnectProxy, mode: str
) -> None:
    server: DemoHttpServer = await start_http_server(mode)
    spec = spec_for({"url": server.url}, {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": "http://unused:1"})
    assert await echo_through(spec) == "hi"
    assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{server.port}"}


async def test_no_proxy_bypasses_the_environment_proxy(
    shared_http_servers: dict[str, DemoHttpServer], proxy: ConnectProxy
) -> None:
    server = shared_http_servers["http"]
    spec = spec_for({"url": server.url}, {"http_proxy": proxy.url, "NO_PROXY": "localhost,127.0.0.0/8"})
    assert await echo_through(spec) == "hi"
    assert proxy.tunnels == []


async def test_a_configured_proxy_wins_over_no_proxy_and_none_goes_direct(
    shared_http_servers: dict[str, DemoHttpServer], proxy: ConnectProxy
) -> None:
    server = shared_http_servers["http"]
    environ = {"HTTP_PROXY": "http://127.0.0.1:1", "NO_PROXY": "*"}
    assert await echo_through(spec_for({"url": server.url, "proxy": proxy.url}, environ)) == "hi"
    tunnelled = list(proxy.tunnels)
    assert tunnelled and set(tunnelled) == {f"127.0.0.1:{server.port}"}
    assert (
        await echo_through(spec_for({"url": server.url, "proxy": "none"}, {"HTTP_PROXY": proxy.url})) == "hi"
    )
    assert proxy.tunnels == tunnelled


async def test_proxy_credentials_come_from_the_proxy_url(
    shared_http_servers: dict[str, DemoHttpServer],
) -> None:
    server = shared_http_servers["http"]
    async with ConnectProxy(credentials=("svc", "p@ss")).running() as guarded:
        good = f"http://svc:p%40ss@127.0.0.1:{guarded.port}"
        assert await echo_through(spec_for({"url": server.url, "proxy": good})) == "hi"
        bad = f"http://svc:wrong@127.0.0.1:{guarded.port}"
        with pytest.raises(UpstreamUnavailable, match=r"refused the tunnel .* 407 Proxy Authentication"):
            await echo_through(spec_for({"url": server.url, "proxy": bad}))
        assert guarded.tunnels and len(guarded.refused) == 1


async def test_an_unreachable_proxy_is_a_clear_connect_failure(
    shared_http_servers: dict[str, DemoHttpServer],
) -> None:
    spec = spec_for({"url": shared_http_servers["http"].url, "proxy": "http://127.0.0.1:1"})
    with pytest.raises(UpstreamUnavailable, match=r"proxy http://127.0.0.1:1 cannot be reached"):
        await echo_through(spec)


async def test_mtls_upstream_with_a_private_ca_and_a_client_certificate(
    mtls_server: DemoHttpServer, pki: Pki, proxy: ConnectProxy
) -> None:
    entry = {
        "url": mtls_server.url,
        "ca_bundle": str(pki.ca),
        "client_cert": str(pki.client_cert),
        "client_key": str(pki.client_key),
    }
    assert mtls_server.url.startswith("https://")
    assert await echo_through(spec_for(entry)) == "hi"
    # Through the proxy the TLS session still ends at the upstream: the proxy only tunnels.
    assert await echo_through(spec_for(entry, {"HTTPS_PROXY": proxy.url})) == "hi"
    assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{mtls_server.port}"}


async def test_mtls_fails_closed_without_the_right_client_certificate(
    mtls_server: DemoHttpServer, pki: Pki
) -> None:
    trusted = {"url": mtls_server.url, "ca_bundle": str(pki.ca)}
    # The handshake refusal can arrive as an alert or as a reset that swallowed it; both name the cause.
    with pytest.raises(UpstreamUnavailable, match="client certificate"):
        await echo_through(spec_for(trusted))
    stranger = {**trusted, "client_cert": str(pki.stranger_cert)}
    with pytest.raises(UpstreamUnavailable) as rejected:
        await echo_through(spec_for(stranger))
    assert "certificate" in rejected.value.detail
    untrusted = {
        "url": mtls_server.url,
        "client_cert": str(pki.client_cert),
        "client_key": str(pki.client_key),
    }
    with pytest.raises(UpstreamUnavailable, match="certificate is not trusted"):
        await echo_through(spec_for(untrusted))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"ca_bundle": "/x"}, "'ca_bundle' applies only to an https:// url"),
        (
            {"url": "https://h/mcp", "ca_bundle": "/nonexistent.pem"},
            "'ca_bundle' '/nonexistent.pem' cannot be",
        ),
        ({"url": "https://h/mcp", "client_key": "/k"}, "'client_key' needs a 'client_cert'"),
        ({"url": "https://h/mcp", "client_cert": "/nonexistent.pem"}, "'client_cert' cannot be loaded"),
        ({"proxy": "https://proxy:3128"}, "'proxy' must be an http:// proxy URL"),
        ({"proxy": "${PROXY}"}, "'proxy' references undefined environment variable 'PROXY'"),
        ({"command": "x", "proxy": "http://p"}, "'proxy' does not apply to a stdio server"),
    ],
)
def test_network_settings_are_checked_at_startup(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ServerConfigError, match="server 'up': ") as error:
        spec_for({"url": "http://h/mcp", **entry} if "command" not in entry else entry)
    assert message in str(error.value)


def test_a_client_key_that_does_not_match_is_a_startup_error(pki: Pki) -> None:
    entry = {"url": "https://h/mcp", "client_cert": str(pki.client_cert), "client_key": str(pki.server_key)}
    with pytest.raises(ServerConfigError, match="'client_cert' cannot be loaded"):
        spec_for(entry)


def test_an_environment_proxy_that_cannot_work_names_its_variable() -> None:
    with pytest.raises(ServerConfigError, match="environment variable HTTPS_PROXY must be an http://"):
        spec_for({"url": "https://h/mcp"}, {"HTTPS_PROXY": "socks5://p:1080"})


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("api.corp.example", 443, "corp.example", True),
        ("api.corp.example", 443, ".corp.example", True),
        ("notcorp.example", 443, "corp.example", False),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("host", 8443, "host:8443", True),
        ("host", 443, "host:8443", False),
        ("::1", 443, "[::1]:443", True),
        ("anything", 1, " * ", True),
        ("host", 80, "", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_proxy_is_chosen_by_scheme_with_lowercase_first() -> None:
    environ = {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1", "HTTP_PROXY": "plain:3128"}
    secure = spec_for({"url": "https://h/mcp"}, environ)
    plain = spec_for({"url": "http://h/mcp"}, environ)
    assert secure.network is not None and secure.network.proxy is not None
    assert secure.network.proxy.host == "low"
    assert plain.network is not None and plain.network.proxy is not None
    assert (plain.network.proxy.host, plain.network.proxy.port) == ("plain", 3128)
