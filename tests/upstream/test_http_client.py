"""The upstream HTTP/1.1 client against a raw socket server that answers exactly as scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from broker.proxy.upstream.http_client import (
    READ_BUFFER_HIGH_WATER,
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    HttpClient,
)
from tests.upstream.support import unused_port

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.handler: Handler | None = None

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + (await reader.readexactly(length) if length else b"")
        self.requests.append(request)
        return request

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        assert self.handler is not None
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer()
    listener = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield scripted, f"http://127.0.0.1:{port}/mcp"
    finally:
        listener.close()


def answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def test_requests_reuse_one_kept_alive_connection(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server

    async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await scripted.read_request(reader)
            writer.write(answer(request.rsplit(b"\r\n\r\n", 1)[1]))

    scripted.handler = keep_answering
    client = HttpClient(url, headers={"Authorization": "Bearer k"})
    try:
        with anyio.fail_after(5):
            bodies = []
            for n in range(3):
                async with await client.request("POST", "/mcp", body=b'{"n":%d}' % n) as response:
                    bodies.append(await response.read())
    finally:
        await client.aclose()

    assert bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert scripted.connections == 1
    first = scripted.requests[0]
    assert first.startswith(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Authorization: Bearer k\r\n" in first and b"Content-Length: 7\r\n" in first


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    server: tuple[ScriptedServer, str],
) -> None:
    scripted, url = server

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        # Read the next request, then hang up without answering: what a server does whose
        # keep-alive timer fired just as the request arrived.
        await reader.readuntil(b"\r\n\r\n")

    scripted.handler = answer_once
    client = HttpClient(url)
    try:
        with anyio.fail_after(5):
            async with await client.request("POST", "/mcp", body=b"{}") as response:
                assert await response.read() == b"{}"
            async with await client.request("POST", "/mcp", body=b"{}") as response:
                assert await response.read() == b"{}"
    finally:
        await client.aclose()
    assert scripted.connections == 2


async def test_a_chunked_stream_arrives_piece_by_piece(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    go_on = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"5\r\nfirst\r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    scripted.handler = stream
    client = HttpClient(url)
    try:
        with anyio.fail_after(5):
            async with await client.request("GET", "/mcp") as response:
                assert response.content_type == "text/event-stream"
                chunks = response.chunks()
                assert await anext(chunks) == b"first"
                go_on.set()
                assert [chunk async for chunk in chunks] == [b"second"]
                assert response.at_eof
    finally:
        await client.aclose()


async def test_a_body_that_ends_when_the_server_closes(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{}")

    scripted.handler = until_close
    client = HttpClient(url)
    try:
        with anyio.fail_after(5):
            async with await client.request("POST", "/mcp", body=b"{}") as response:
                assert await response.read() == b"{}"
    finally:
        await client.aclose()


async def test_an_answer_cut_short_raises_connection_lost(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')

    scripted.handler = cut
    client = HttpClient(url)
    try:
        with anyio.fail_after(5), pytest.raises(ConnectionLost):
            async with await client.request("POST", "/mcp", body=b"{}") as response:
                await response.read()
    finally:
        await client.aclose()


async def test_a_server_that_hangs_up_on_a_fresh_connection_is_not_retried(
    server: tuple[ScriptedServer, str],
) -> None:
    scripted, url = server

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)

    scripted.handler = hang_up
    client = HttpClient(url)
    try:
        with anyio.fail_after(5), pytest.raises(ConnectionLost):
            await client.request("POST", "/mcp", body=b"{}")
    finally:
        await client.aclose()
    # A request the server may have acted on is never sent twice.
    assert len(scripted.requests) == 1


async def test_garbage_is_a_bad_response(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await reader.read()

    scripted.handler = garbage
    client = HttpClient(url)
    try:
        with anyio.fail_after(5), pytest.raises(BadResponse):
            await client.request("POST", "/mcp", body=b"{}")
    finally:
        await client.aclose()


async def test_a_slow_reader_pauses_the_socket_instead_of_buffering_everything(
    server: tuple[ScriptedServer, str],
) -> None:
    scripted, url = server
    piece = b"x" * 65536
    pieces = (READ_BUFFER_HIGH_WATER // len(piece)) * 4

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * pieces))
        for _ in range(pieces):
            writer.write(piece)
            await writer.drain()

    scripted.handler = flood
    client = HttpClient(url)
    try:
        with anyio.fail_after(10):
            async with await client.request("GET", "/mcp") as response:
                received = 0
                peak = 0
                async for chunk in response.chunks():
                    received += len(chunk)
                    peak = max(peak, response._connection._buffered)
                    await asyncio.sleep(0)
    finally:
        await client.aclose()
    assert received == len(piece) * pieces
    assert peak <= READ_BUFFER_HIGH_WATER + 4 * len(piece)


async def test_an_unreachable_origin_fails_to_connect() -> None:
    client = HttpClient(f"http://127.0.0.1:{unused_port()}/mcp")
    with anyio.fail_after(5), pytest.raises(ConnectFailed, match=r"refused|Connect call failed"):
        await client.request("POST", "/mcp", body=b"{}")
    await client.aclose()


def test_headers_cannot_smuggle_lines() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        HttpClient("http://127.0.0.1:1/mcp", headers={"X-Token": "a\r\nX-Admin: yes"})
    with pytest.raises(ValueError, match="not an http"):
        HttpClient("ftp://127.0.0.1/mcp")


async def test_a_stream_released_before_its_end_is_reused_once_it_ends_or_closed_if_it_does_not(
    server: tuple[ScriptedServer, str],
) -> None:
    scripted, url = server
    finish = asyncio.Event()

    async def streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await scripted.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            writer.write(b"5\r\nfirst\r\n")
            await writer.drain()
            await finish.wait()
            finish.clear()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    scripted.handler = streams
    client = HttpClient(url)
    try:
        with anyio.fail_after(5):
            response = await client.request("GET", "/mcp")
            assert await anext(response.chunks()) == b"first"
            ended = asyncio.Event()
            response.release_when_complete(5.0)
            response._connection.on_complete = _chain(response._connection.on_complete, ended.set)
            finish.set()
            await ended.wait()
            again = await client.request("GET", "/mcp")
            assert scripted.connections == 1  # the finished stream's connection was reused

            assert await anext(again.chunks()) == b"first"
            again.release_when_complete(0.01)  # not handed back before its end: a new connection serves
            second = await client.request("GET", "/mcp")
            assert scripted.connections == 2
            second.release()
    finally:
        await client.aclose()


def _chain(first: Callable[[], None] | None, then: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        if first is not None:
            first()
        then()

    return both
