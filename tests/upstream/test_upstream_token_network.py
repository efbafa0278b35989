"""The upstream's authorization server is reached through the upstream's own network settings.

An upstream inside a company network often has its authorization server there too: behind the
same private CA, wanting the same client certificate, through the same proxy. The token server
here serves https with a throwaway CA (and, where a test says so, requires a client certificate);
the upstream is the demo MCP server over TLS in its own process.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from broker.proxy.upstream.pool import UpstreamPool
from broker.proxy.upstream.spec import HttpServer, SseServer, parse_servers
from tests.upstream.network_support import ConnectProxy, Pki, make_pki
from tests.upstream.support import DemoHttpServer
from tests.upstream.token_server import TokenServer

pytestmark = pytest.mark.anyio

BROKER_CLIENT = ("broker", "broker-secret")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_demo_server(pki: Pki, mode: str, *, client_ca: bool = False) -> Iterator[DemoHttpServer]:
    env = {"DEMO_TLS_CERT": str(pki.server_cert), "DEMO_TLS_KEY": str(pki.server_key)}
    if client_ca:
        env["DEMO_TLS_CLIENT_CA"] = str(pki.ca)
    server = DemoHttpServer(mode, env=env)
    try:
        server.wait_ready_blocking()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["http", "sse"])
def tls_upstream(pki: Pki, request: pytest.FixtureRequest) -> Iterator[DemoHttpServer]:
    """The demo server over https, its certificate from the private CA, over both transports."""
    yield from tls_demo_server(pki, request.param)


@pytest.fixture(scope="module")
def mtls_upstream(pki: Pki) -> Iterator[DemoHttpServer]:
    yield from tls_demo_server(pki, "http", client_ca=True)


def server_context(pki: Pki, *, client_certificates: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if client_certificates:
        context.load_verify_locations(pki.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@asynccontextmanager
async def tls_token_server(pki: Pki, *, client_certificates: bool = False) -> AsyncIterator[TokenServer]:
    context = server_context(pki, client_certificates=client_certificates)
    async with TokenServer(clients=dict([BROKER_CLIENT]), ssl_context=context).running() as server:
        yield server


def spec_for(entry: dict[str, Any]) -> HttpServer | SseServer:
    spec = parse_servers({"mcpServers": {"docs": entry}}, environ={})["docs"]
    assert isinstance(spec, HttpServer | SseServer)
    return spec


def grant(**where: str) -> dict[str, str]:
    return {
        "type": "client_credentials",
        "client_id": BROKER_CLIENT[0],
        "client_secret": BROKER_CLIENT[1],
        **where,
    }


async def authorization_seen(entry: dict[str, Any]) -> str:
    """The Authorization header the upstream got on a call, once the pool connected through `entry`."""
    async with UpstreamPool({"docs": spec_for(entry)}, environ={}) as pool:
        await pool.wait_ready(15)
        assert pool.is_connected("docs"), pool.status()
        tool = pool.resolve("seen_headers")
        assert tool is not None
        with anyio.fail_after(15):
            result = await pool.call_tool(tool, {})
    return str(json.loads(result["content"][0]["text"])["authorization"])


async def last_error(entry: dict[str, Any]) -> str:
    async with UpstreamPool({"docs": spec_for(entry)}, environ={}) as pool:
        await pool.wait_ready(15)
        (status,) = pool.status()
    assert status.state != "connected"
    assert status.last_error is not None
    return status.last_error


async def test_the_authorization_server_is_verified_against_the_upstreams_ca_bundle(
    pki: Pki, tls_upstream: DemoHttpServer
) -> None:
    async with tls_token_server(pki) as token_server:
        entry = {"url": tls_upstream.url, "ca_bundle": str(pki.ca), "auth": grant(issuer=token_server.issuer)}
        seen = await authorization_seen(entry)
    (token,) = token_server.issued
    assert seen == f"Bearer {token}"


async def test_an_authorization_server_behind_mtls_gets_the_upstreams_client_certificate(
    pki: Pki, mtls_upstream: DemoHttpServer
) -> None:
    async with tls_token_server(pki, client_certificates=True) as token_server:
        entry = {
            "url": mtls_upstream.url,
            "ca_bundle": str(pki.ca),
            "client_cert": str(pki.client_cert),
            "client_key": str(pki.client_key),
            "auth": grant(token_url=token_server.token_url),
        }
        seen = await authorization_seen(entry)
    (token,) = token_server.issued
    assert seen == f"Bearer {token}"


async def test_a_tls_failure_at_the_token_endpoint_keeps_the_call_from_going_out(
    pki: Pki, tls_upstream: DemoHttpServer
) -> None:
    async with tls_token_server(pki, client_certificates=True) as token_server:
        # The upstream itself needs no client certificate, so none is configured: its token endpoint refuses.
        entry = {
            "url": tls_upstream.url,
            "ca_bundle": str(pki.ca),
            "auth": grant(token_url=token_server.token_url),
        }
        error = await last_error(entry)
    assert (
        f"token endpoint {token_server.token_url} cannot be reached: the server closed the connection"
        in error
    )
    assert token_server.requests == [] and token_server.issued == {}


async def test_the_token_endpoint_goes_through_the_upstreams_proxy(
    pki: Pki, tls_upstream: DemoHttpServer
) -> None:
    proxy_credentials = ("svc", "p@ss")
    async with ConnectProxy(proxy_credentials).running() as proxy, tls_token_server(pki) as token_server:
        entry = {
            "url": tls_upstream.url,
            "proxy": f"http://svc:p%40ss@127.0.0.1:{proxy.port}",
            "ca_bundle": str(pki.ca),
            "auth": grant(issuer=token_server.issuer),
        }
        seen = await authorization_seen(entry)
    assert seen.startswith("Bearer ")
    assert set(proxy.tunnels) == {f"127.0.0.1:{tls_upstream.port}", f"127.0.0.1:{token_server.port}"}
    assert proxy.refused == []  # both presented the proxy credentials
