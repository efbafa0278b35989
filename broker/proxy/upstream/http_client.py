"""A small HTTP/1.1 client for the upstream connections: keep-alive, streamed bodies, nothing else.

Every allowed ``tools/call`` through an HTTP upstream is one POST, so this client sits on the
broker's hot path. A general-purpose client spends several times the broker's whole CPU budget
per request on features an MCP upstream never needs (cookies, redirects, proxies, multipart,
compression negotiation); this one formats the request head itself and parses the answer with
httptools (llhttp, the parser uvicorn uses), on asyncio's protocol callbacks.

Exception tree::

    HttpClientError               the request got no complete HTTP answer
    ├── ConnectFailed             no connection could be made (refused, unresolvable, TLS, timeout)
    ├── ConnectionLost            the server closed or reset the connection before the answer ended
    └── BadResponse               the bytes that came back are not HTTP/1.1

An answer with any status is a `Response`, not an error: the caller decides what a 404 means.

Through a proxy (`ProxyRoute`), each new connection first opens a ``CONNECT`` tunnel and then
speaks to the upstream inside it (TLS end to end for https), so only connecting costs more; a
request on a kept-alive connection costs the same as a direct one.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final, Self, cast
from urllib.parse import urlsplit

import httptools

from broker.proxy.upstream.credentials.network import ProxyRoute

MAX_IDLE_CONNECTIONS: Final = 16
MAX_PROXY_ANSWER: Final = 16 * 1024
_CERTIFICATE_ALERTS: Final = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "ACCESS_DENIED")
READ_BUFFER_HIGH_WATER: Final = 1024 * 1024
"""Bytes of unread body after which reading from the socket pauses until the consumer catches up."""


class HttpClientError(Exception):
    pass


class ConnectFailed(HttpClientError):
    pass


class ConnectionLost(HttpClientError):
    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint
        """What probably happened, when the way the connection ended suggests it."""


class BadResponse(HttpClientError):
    pass


async def _open_socket(proxy: ProxyRoute) -> socket.socket:
    loop = asyncio.get_running_loop()
    problem: BaseException | None = None
    try:
        addresses = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        addresses, problem = [], exc
    for family, kind, protocol, _, address in addresses:
        sock = socket.socket(family, kind, protocol)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            problem = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    reason = connect_problem(problem) if problem is not None else "no address"
    raise ConnectFailed(f"proxy {proxy.url} cannot be reached: {reason}")


def connect_problem(exc: BaseException) -> str:
    """Why a connection could not be made, in the configuration's terms where TLS was the reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and "CERTIFICATE_REQUIRED" in str(exc):
        return "the server requires a client certificate (configure client_cert)"
    if isinstance(exc, ssl.SSLError) and any(alert in str(exc) for alert in _CERTIFICATE_ALERTS):
        return f"the server rejected the client certificate ({exc.reason or exc})"
    return str(exc) or type(exc).__name__


def transport_is_tls(transport: asyncio.BaseTransport | None) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def _check_header(name: str, value: str) -> None:
    if any(c in name for c in "\r\n:") or not name or any(c in value for c in "\r\n"):
        raise ValueError(f"invalid HTTP header {name!r}: names and values may not contain line breaks")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self._failure: HttpClientError | None = None
        self._paused = False
        self._loop = asyncio.get_running_loop()
        self.answers = 0
        self.on_complete: Callable[[], None] | None = None
        """Called once the current answer has ended (set by `Response.release_when_complete`)."""
        self._reset()

    def _reset(self) -> None:
        self._failure = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self._header_name = ""
        self._headers_done: asyncio.Future[None] = self._loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._data_ready: asyncio.Event = asyncio.Event()
        self.complete = False
        self._keep_alive = False
        self.received_any = False

    @property
    def reusable(self) -> bool:
        transport = self._transport
        return self.lost is None and transport is not None and not transport.is_closing()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the server's answer is not valid HTTP/1.1: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionResetError("connection closed by the server")
        if self._headers_done.done() and not self.complete and self._ends_at_close():
            # No length and no chunking: the body was delimited by the server closing (HTTP/1.0 style).
            self.on_message_complete()
            return
        if isinstance(exc, ssl.SSLError) and not self.received_any:
            # A TLS 1.3 server checks the client certificate after the client's handshake is done
            # and refuses with an alert: the request was never read, so it is a failure to connect.
            self._fail(ConnectFailed(connect_problem(exc)))
            return
        hint = ""
        if self.answers == 0 and not self.received_any and transport_is_tls(self._transport):
            # Often a refused client certificate: the alert is lost when the server resets the socket.
            hint = "the server ended the TLS session before answering anything; does it need a client certificate?"
        self._fail(
            ConnectionLost(f"the connection was closed before the answer ended ({self.lost})", hint=hint)
        )

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        self._data_ready.set()
        if self._buffered > READ_BUFFER_HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        # Asked now: once this callback returns, llhttp starts on the next message and forgets.
        self._keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self.answers += 1
        self._data_ready.set()
        if self.on_complete is not None:
            done, self.on_complete = self.on_complete, None
            done()

    # -- used by HttpClient and Response ----------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        self._reset()
        self._transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self._transport.write(body)

    async def wait_for_headers(self) -> None:
        await self._headers_done

    async def next_chunk(self) -> bytes | None:
        """The next piece of body, or None once the body has ended."""
        while not self._chunks:
            if self.complete:
                return None
            if self._failure is not None:
                raise self._failure
            self._data_ready.clear()
            await self._data_ready.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= READ_BUFFER_HIGH_WATER // 4 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    def keeps_alive(self) -> bool:
        return self.complete and self._keep_alive and self.reusable

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _ends_at_close(self) -> bool:
        return (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )

    @property
    def drained(self) -> bool:
        return self.complete and not self._chunks

    def _fail(self, error: HttpClientError) -> None:
        if self._failure is None:
            self._failure = error
        if not self._headers_done.done():
            self._headers_done.set_exception(error)
            # Nobody may be awaiting it yet (or any more); mark it retrieved so asyncio stays quiet.
            self._headers_done.exception()
        self._data_ready.set()


class Response:
    """An answer whose head has arrived; the body is read (or streamed) from it.

    Use it as an async context manager: leaving it returns a fully read connection to the
    pool and closes one whose body was abandoned halfway.
    """

    def __init__(self, connection: _Connection, client: HttpClient) -> None:
        self._connection = connection
        self._client = client
        self._released = False
        self.status = connection.status
        self.headers: Mapping[str, str] = connection.headers

    @property
    def content_type(self) -> str:
        """The media type, lowercased, without parameters (``text/event-stream``)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def at_eof(self) -> bool:
        return self._connection.drained

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces the network delivers it; raises ConnectionLost if it is cut short."""
        while (chunk := await self._connection.next_chunk()) is not None:
            yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body, or its first `limit` bytes (the rest is then abandoned)."""
        parts: list[bytes] = []
        size = 0
        while (limit is None or size < limit) and (chunk := await self._connection.next_chunk()) is not None:
            parts.append(chunk)
            size += len(chunk)
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._client._give_back(self._connection)

    def release_when_complete(self, grace: float) -> None:
        """Done with the body, whose end is due any moment (a stream after its last event): hand the
        connection back once it ends, or close it if that takes longer than `grace` seconds. The
        caller answers its own caller now instead of waiting for the end."""
        if self._released:
            return
        connection = self._connection
        if connection.complete:
            self.release()
            return
        self._released = True
        timer = asyncio.get_running_loop().call_later(grace, self._client._discard, connection)

        def ended() -> None:
            timer.cancel()
            self._client._give_back(connection)

        connection.on_complete = ended

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class HttpClient:
    """Requests to one origin (scheme, host, port) over a small pool of kept-alive connections."""

    def __init__(
        self,
        origin_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        proxy: ProxyRoute | None = None,
    ) -> None:
        parts = urlsplit(origin_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {origin_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        host_header = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if not default_port:
            host_header = f"{host_header}:{self._port}"
        fixed = {"Host": host_header, **(headers or {})}
        for name, value in fixed.items():
            _check_header(name, value)
        self._fixed_head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._connect_timeout = connect_timeout
        self._proxy = proxy
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closed = False

    async def request(
        self, method: str, target: str, *, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Response:
        """Sends one request and returns once the answer's head has arrived.

        `target` is the path (and query) on this client's origin. A kept-alive connection that
        the server closed just as the request went out is replaced once: the server cannot
        have acted on a request it never read.
        """
        if self._closed:
            raise ConnectionLost("the client is closed")
        head = self._head(method, target, headers, body)
        for attempt in (1, 2):
            connection, reused = self._take_idle()
            if connection is None:
                connection = await self._connect()
            self._busy.add(connection)
            try:
                connection.send(head, body)
                await connection.wait_for_headers()
            except ConnectionLost:
                self._discard(connection)
                if reused and not connection.received_any and attempt == 1:
                    continue
                raise
            except BaseException:
                self._discard(connection)
                raise
            return Response(connection, self)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()

    def _head(self, method: str, target: str, headers: Mapping[str, str] | None, body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._fixed_head]
        if headers:
            for name, value in headers.items():
                _check_header(name, value)
            lines.append("".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1"))
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        return b"".join(lines)

    def _take_idle(self) -> tuple[_Connection | None, bool]:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection, True
            connection.close()
        return None, False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        server_hostname = self._host if self._ssl is not None else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._proxy is None:
                    _, connection = await loop.create_connection(
                        _Connection, self._host, self._port, ssl=self._ssl, server_hostname=server_hostname
                    )
                else:
                    tunnel = await self._tunnel(self._proxy)
                    try:
                        _, connection = await loop.create_connection(
                            _Connection, sock=tunnel, ssl=self._ssl, server_hostname=server_hostname
                        )
                    except BaseException:
                        tunnel.close()
                        raise
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self._connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(connect_problem(exc)) from exc
        return connection

    async def _tunnel(self, proxy: ProxyRoute) -> socket.socket:
        """A socket connected through `proxy` to this client's origin, ready for TLS or plain HTTP."""
        loop = asyncio.get_running_loop()
        tunnel = await _open_socket(proxy)
        authority = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if proxy.authorization is not None:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        answer = b""
        try:
            await loop.sock_sendall(tunnel, head.encode("latin-1") + b"\r\n")
            while b"\r\n\r\n" not in answer and len(answer) < MAX_PROXY_ANSWER:
                chunk = await loop.sock_recv(tunnel, 4096)
                if not chunk:
                    break
                answer += chunk
        except OSError as exc:
            tunnel.close()
            raise ConnectFailed(f"proxy {proxy.url} dropped the tunnel to {authority}: {exc}") from exc
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        # Neither an HTTP nor a TLS server speaks first, so bytes after the proxy's answer are wrong.
        if len(fields) < 2 or fields[1] != "200" or not answer.endswith(b"\r\n\r\n"):
            tunnel.close()
            shown = status_line[:200] or "no answer"
            raise ConnectFailed(f"proxy {proxy.url} refused the tunnel to {authority}: {shown}")
        return tunnel

    def _give_back(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        if not self._closed and connection.keeps_alive() and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.close()

    def _discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.close()
