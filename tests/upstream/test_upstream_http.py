"""Details of the two HTTP transports: sessions, resumption, JSON answers, HTTP-level failures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import anyio
import pytest
from aiohttp import web

from broker.proxy.upstream.base import UpstreamRpcError, UpstreamUnavailable
from broker.proxy.upstream.http import StreamableHttpConnection
from broker.proxy.upstream.spec import HttpServer, SseServer
from broker.proxy.upstream.sse import SseConnection
from tests.upstream.support import DemoHttpServer, Notifications, unused_port

pytestmark = pytest.mark.anyio

StartServer = Callable[[str], Awaitable[DemoHttpServer]]


async def test_a_cut_response_stream_is_resumed(shared_http_servers: dict[str, DemoHttpServer]) -> None:
    server = shared_http_servers["http"]
    connection = StreamableHttpConnection(HttpServer("demo", server.url, {}), Notifications())
    progress = Notifications()
    try:
        with anyio.fail_after(15):
            await connection.start()
            result = await connection.request(
                "tools/call",
                {"name": "interrupted", "arguments": {}, "_meta": {"progressToken": "p"}},
                on_notification=progress,
            )
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    assert result["content"][0]["text"] == "resumed"
    assert [message["params"]["message"] for message in progress.received] == [
        "before the break",
        "after the break",
    ]


async def test_the_session_is_kept_and_deleted_on_close(
    shared_http_servers: dict[str, DemoHttpServer],
) -> None:
    server = shared_http_servers["http"]
    connection = StreamableHttpConnection(HttpServer("demo", server.url, {}), Notifications())
    try:
        with anyio.fail_after(15):
            await connection.start()
            await connection.request("tools/list", None)
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    session_id = connection.session_id
    assert session_id
    with anyio.fail_after(10):
        status = await post_in_session(server.url, session_id)
    assert status == 404


async def test_an_expired_session_closes_the_connection(
    shared_http_servers: dict[str, DemoHttpServer],
) -> None:
    server = shared_http_servers["http"]
    connection = StreamableHttpConnection(HttpServer("demo", server.url, {}), Notifications())
    try:
        with anyio.fail_after(15):
            await connection.start()
            assert connection.session_id is not None
            async with (
                aiohttp.ClientSession() as http,
                http.delete(server.url, headers={"Mcp-Session-Id": connection.session_id}) as deleted,
            ):
                assert deleted.status == 200
            with pytest.raises(UpstreamUnavailable, match="ended the session"):
                await connection.request("tools/list", None)
            await connection.wait_closed()
    finally:
        with anyio.fail_after(10):
            await connection.aclose()


@pytest.mark.parametrize("transport", ["http", "http-json", "sse"])
async def test_integers_beyond_64_bits_come_back_exact(
    start_http_server: StartServer, transport: str
) -> None:
    server = await start_http_server(transport)
    connection = (
        SseConnection(SseServer("demo", server.url, {}), Notifications())
        if transport == "sse"
        else StreamableHttpConnection(HttpServer("demo", server.url, {}), Notifications())
    )
    try:
        with anyio.fail_after(15):
            await connection.start()
            summed = await connection.request(
                "tools/call", {"name": "add", "arguments": {"a": 2**70, "b": 1}}
            )
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    assert summed["structuredContent"] == {"result": 2**70 + 1}


async def test_json_answers_from_a_stateless_server(start_http_server: StartServer) -> None:
    server = await start_http_server("http-json")
    connection = StreamableHttpConnection(HttpServer("demo", server.url, {}), Notifications())
    try:
        with anyio.fail_after(15):
            await connection.start()
            echoed = await connection.request("tools/call", {"name": "echo", "arguments": {"text": "json"}})
            with pytest.raises(UpstreamRpcError) as raised:
                await connection.request("no/such/method", None)
    finally:
        with anyio.fail_after(10):
            await connection.aclose()
    assert connection.session_id is None
    assert echoed["structuredContent"] == {"result": "json"}
    assert raised.value.code == -32601


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_an_unreachable_url(transport: str) -> None:
    url = f"http://127.0.0.1:{unused_port()}/{'mcp' if transport == 'http' else 'sse'}"
    connection = (
        StreamableHttpConnection(HttpServer("gone", url, {}), Notifications())
        if transport == "http"
        else SseConnection(SseServer("gone", url, {}), Notifications())
    )
    with anyio.fail_after(10), pytest.raises(UpstreamUnavailable, match="cannot reach"):
        await connection.start()
    await connection.aclose()


@pytest.fixture
async def misbehaving_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A plain HTTP server (not MCP) that answers the ways broken or misconfigured endpoints do."""
    seen_headers: list[dict[str, str]] = []

    async def unauthorized(request: web.Request) -> web.Response:
        seen_headers.append(dict(request.headers))
        return web.Response(status=401, text="missing or bad token")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/elsewhere/mcp")

    async def foreign_endpoint(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: endpoint\r\ndata: http://attacker.example/messages\r\n\r\n")
        return response

    app = web.Application()
    app.router.add_post("/unauthorized", unauthorized)
    app.router.add_post("/moved", moved)
    app.router.add_get("/foreign/sse", foreign_endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen_headers
    finally:
        await runner.cleanup()


async def test_http_failures_are_reported_clearly(
    misbehaving_server: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen_headers = misbehaving_server
    spec = HttpServer("docs", f"{base}/unauthorized", {"Authorization": "Bearer s3cret"})
    connection = StreamableHttpConnection(spec, Notifications())
    with (
        anyio.fail_after(10),
        pytest.raises(UpstreamUnavailable, match="HTTP 401 Unauthorized: missing or bad token"),
    ):
        await connection.start()
    await connection.aclose()
    assert seen_headers[0]["Authorization"] == "Bearer s3cret"
    assert seen_headers[0]["Accept"] == "application/json, text/event-stream"

    connection = StreamableHttpConnection(HttpServer("docs", f"{base}/moved", {}), Notifications())
    with anyio.fail_after(10), pytest.raises(UpstreamUnavailable, match=r"redirected .* to /elsewhere/mcp"):
        await connection.start()
    await connection.aclose()


async def test_sse_refuses_an_endpoint_on_another_origin(
    misbehaving_server: tuple[str, list[dict[str, str]]],
) -> None:
    base, _ = misbehaving_server
    connection = SseConnection(SseServer("legacy", f"{base}/foreign/sse", {}), Notifications())
    with anyio.fail_after(10), pytest.raises(UpstreamUnavailable, match="another origin"):
        await connection.start()
    await connection.aclose()


async def post_in_session(url: str, session_id: str) -> int:
    headers = {
        "Mcp-Session-Id": session_id,
        "Mcp-Protocol-Version": "2025-11-25",
        "Accept": "application/json, text/event-stream",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers) as response,
    ):
        return response.status
