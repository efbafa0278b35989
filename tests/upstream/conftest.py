from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator

import pytest

from broker.proxy.upstream.spec import HttpServer, SseServer, StdioServer
from tests.upstream.support import DemoHttpServer, demo_stdio


@pytest.fixture
def start_http_server() -> Iterator[Callable[[str], Awaitable[DemoHttpServer]]]:
    started: list[DemoHttpServer] = []

    async def start(mode: str) -> DemoHttpServer:
        server = DemoHttpServer(mode)
        started.append(server)
        await server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_http_servers() -> Iterator[dict[str, DemoHttpServer]]:
    """Demo HTTP servers shared by a module's tests that leave them as they found them."""
    servers = {mode: DemoHttpServer(mode) for mode in ("http", "sse")}
    try:
        for server in servers.values():
            server.wait_ready_blocking()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(params=["stdio", "http", "sse"])
def demo_spec(
    request: pytest.FixtureRequest, shared_http_servers: dict[str, DemoHttpServer]
) -> StdioServer | HttpServer | SseServer:
    """The demo server over each transport in turn (HTTP ones shared within the module)."""
    if request.param == "stdio":
        return demo_stdio()
    return shared_http_servers[request.param].spec()


@pytest.fixture(params=["stdio", "http", "sse"])
async def fresh_demo_spec(
    request: pytest.FixtureRequest, start_http_server: Callable[[str], Awaitable[DemoHttpServer]]
) -> StdioServer | HttpServer | SseServer:
    """The demo server over each transport in turn, started for this test alone."""
    if request.param == "stdio":
        return demo_stdio()
    return (await start_http_server(request.param)).spec()


@pytest.fixture
def environ() -> dict[str, str]:
    return dict(os.environ)
