"""The listener's limits over real sockets: slow requests get 408, held answers and streams are never
cut, one address cannot open more than its share of connections, and `broker serve` applies them."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from anyio.abc import SocketStream

from broker.config.settings import LimitSettings
from broker.config.web import WebSettings
from tests.e2e.harness import (
    AGENT_KEYS,
    APPROVER_TOKENS,
    RawSession,
    exchange_server,
    make_settings,
    running_broker,
)
from tests.e2e.test_approvals_flow import POLICY as HELD_POLICY
from tests.e2e.test_approvals_flow import watch
from tests.e2e.test_serve_process import KEY as SERVE_KEY
from tests.e2e.test_serve_process import exchange_config, serve
from tests.web.support import http_signed_in, web_settings

pytestmark = pytest.mark.anyio

QUICK = LimitSettings(header_timeout=0.5, body_timeout=0.5)
BIG_ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000}


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[SocketStream]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    async with await anyio.connect_tcp(parts.hostname, parts.port) as stream:
        yield stream


async def until_closed(stream: SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = []
    while True:
        try:
            received.append(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return b"".join(received)


async def one_response(stream: SocketStream) -> bytes:
    """One response with a Content-Length, read off a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive()
    return head + b"\r\n\r\n" + body


async def cut_after(url: str, sent: bytes) -> tuple[bytes, float]:
    """Sends `sent` and nothing more; what the server answers before it closes, and after how long."""
    async with connected(url) as stream:
        started = time.monotonic()
        if sent:
            await stream.send(sent)
        with anyio.fail_after(10):
            answer = await until_closed(stream)
        return answer, time.monotonic() - started


def half_a_body(path: str, authorization: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {authorization}\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
        'Content-Length: 200\r\n\r\n{"jsonrpc": "2.0", '
    ).encode()


async def test_a_request_whose_head_or_body_does_not_arrive_in_time_gets_408_and_is_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_broker(make_settings(tmp_path, "version: '1'\n", {}, limits=QUICK)) as running:
        cases = {
            "nothing at all": b"",
            "half a request line": b"GET /healthz HTT",
            "half the headers": b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: ",
            "half an /mcp body": half_a_body("/mcp", AGENT_KEYS["trader"]),
            "half an API body": half_a_body("/api/approvals/a-1/approve", APPROVER_TOKENS["alice"]),
        }
        for case, sent in cases.items():
            answer, elapsed = await cut_after(running.url, sent)
            what, key = ("body", "body_timeout") if b"Content-Length" in sent else ("head", "header_timeout")
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), (case, answer)
            assert b"connection: close\r\n" in answer
            assert answer.endswith(f"Request {what} not complete within 0.5 s (limits.{key})\n".encode())
            assert elapsed >= 0.4, case  # the deadline, not an eager close

        # A slowloris that keeps trickling bytes does not push the deadline back.
        async with connected(running.url) as stream:

            async def trickle() -> None:
                for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"x" * 1000:
                    try:
                        await stream.send(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        return
                    await anyio.sleep(0.05)  # the client's pace, not a wait for the server

            with anyio.fail_after(10):  # the trickle alone would last 50 s
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(trickle)
                    answer = await until_closed(stream)
                    tasks.cancel_scope.cancel()
            assert answer.startswith(b"HTTP/1.1 408"), answer

        # A request that arrives whole is served, and the connection stays usable after it.
        async with connected(running.url) as stream:
            with anyio.fail_after(10):
                for _ in range(2):
                    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
                    assert (await one_response(stream)).startswith(b"HTTP/1.1 200 OK")

        # Left idle after an answer, a connection is closed by uvicorn's timeout_keep_alive (5 s),
        # not by header_timeout: that counts from the next request's first byte.
        async with connected(running.url) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
            with anyio.fail_after(50):
                answered = await one_response(stream)
                idle_since = time.monotonic()
                assert await until_closed(stream) == b""
            assert answered.startswith(b"HTTP/1.1 200 OK") and time.monotonic() - idle_since >= 4

        # Two requests in one write: the first is answered, then the second's unfinished head times out.
        answer, _ = await cut_after(
            running.url, b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\nGET /healthz HTTP/1.1\r\nHost: b"
        )
        first, _, second = answer.partition(b"HTTP/1.1 408 Request Timeout\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK") and second.endswith(b"(limits.header_timeout)\n"), answer

    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_held_call_and_the_event_streams_outlive_both_timeouts(tmp_path: Path) -> None:
    """The agent's POST waits for a human, its GET /mcp stream and the inbox's /events stream stay
    open, while slow clients opened meanwhile are cut: the timers ran, and touched none of them."""
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            changed.set()

    settings = web_settings(tmp_path, limits=QUICK)
    async with running_broker(settings) as running, http_signed_in(running, "bob") as inbox:
        with anyio.fail_after(60):
            async with inbox.stream("GET", "/events") as events:
                lines = events.aiter_lines()

                async def next_event() -> dict[str, Any]:
                    async for line in lines:
                        if line.startswith("data: "):
                            event: dict[str, Any] = json.loads(line[len("data: ") :])
                            return event
                    raise AssertionError("the /events stream ended")

                await running.broker.inbox_events.wait_for_subscribers(1)
                client = running.client()
                client.message_handler = on_message
                async with client, anyio.create_task_group() as tasks:
                    if running.broker.changes.subscriber_count == 0:
                        await running.broker.changes.wait_for_subscriber()
                    outcome: dict[str, Any] = {}

                    async def agent() -> None:
                        outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                    tasks.start_soon(agent)
                    opened = await next_event()
                    assert opened["kind"] == "opened"

                    # Each witness waits out one deadline: together longer than both timeouts.
                    for witness in (b"GET /healthz HTTP/1.1\r\n", half_a_body("/mcp", AGENT_KEYS["trader"])):
                        answer, _ = await cut_after(running.url, witness)
                        assert answer.startswith(b"HTTP/1.1 408"), answer

                    settings.policy_path.write_text(settings.policy_path.read_text() + "\n# touched\n")
                    assert running.broker.policy_file.reload().changed
                    await changed.wait()  # over the GET /mcp stream

                    async with running.approver("alice") as alice:
                        decided = await alice.post(f"/api/approvals/{opened['id']}/approve")
                        assert decided.status_code == 200, decided.text
                result = outcome["result"]
                assert not result.is_error and result.structured_content["quantity"] == 10
                updated = await next_event()
                assert (updated["kind"], updated["id"]) == ("updated", opened["id"])


async def test_one_address_gets_at_most_its_share_of_connections_until_some_close(tmp_path: Path) -> None:
    capped = LimitSettings(header_timeout=10, body_timeout=10, max_connections_per_address=3)
    async with running_broker(make_settings(tmp_path, "version: '1'\n", {}, limits=capped)) as running:
        with anyio.fail_after(30):
            async with connected(running.url) as first, connected(running.url) as second:
                async with connected(running.url) as third:
                    for stream in (first, second, third):
                        await stream.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
                        assert (await one_response(stream)).startswith(b"HTTP/1.1 200 OK")
                    for _ in range(2):  # a refused connection is not counted: the next is refused too
                        async with connected(running.url) as extra:
                            refused = await until_closed(extra)
                        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), refused
                        assert refused.endswith(
                            b"Too many connections from 127.0.0.1: at most 3 at a time "
                            b"(limits.max_connections_per_address); retry when some have closed\n"
                        )
                    # The connections already open keep working.
                    await first.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
                    assert (await one_response(first)).startswith(b"HTTP/1.1 200 OK")
                    # The server closes the third: its count is released before the client sees the end.
                    await third.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
                    assert (await until_closed(third)).startswith(b"HTTP/1.1 200 OK")
                async with connected(running.url) as fourth:
                    await fourth.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
                    assert (await one_response(fourth)).startswith(b"HTTP/1.1 200 OK")
                    async with connected(running.url) as extra:
                        assert (await until_closed(extra)).startswith(b"HTTP/1.1 503")


async def test_a_trusted_proxy_is_not_capped(tmp_path: Path) -> None:
    proxy = WebSettings(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    capped = LimitSettings(max_connections_per_address=1)
    settings = make_settings(tmp_path, "version: '1'\n", {}, limits=capped, web=proxy)
    async with running_broker(settings) as running, connected(running.url) as first:
        with anyio.fail_after(30):
            async with connected(running.url) as second:
                for stream in (first, second):
                    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
                    assert (await one_response(stream)).startswith(b"HTTP/1.1 200 OK")
    untrusted = replace(settings, web=WebSettings(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)))
    async with running_broker(untrusted) as running, connected(running.url) as first:
        with anyio.fail_after(30):
            await first.send(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
            assert (await one_response(first)).startswith(b"HTTP/1.1 200 OK")
            async with connected(running.url) as second:
                assert (await until_closed(second)).startswith(b"HTTP/1.1 503")


def test_broker_serve_applies_the_limits_section(tmp_path: Path) -> None:
    exchange_config(tmp_path, policy_poll_seconds=3600)
    config = tmp_path / "broker.yaml"
    config.write_text(config.read_text() + "limits: {body_timeout: 0.5, max_connections_per_address: 2}\n")
    with serve(["--config", str(config)], tmp_path) as (_, url):
        parts = urlsplit(url)
        address = (parts.hostname, parts.port)
        with socket.create_connection(address, timeout=10) as slow:
            slow.sendall(half_a_body("/mcp", SERVE_KEY))
            answer = b"".join(iter(lambda: slow.recv(4096), b""))
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert answer.endswith(b"(limits.body_timeout)\n")
        with socket.create_connection(address, timeout=10), socket.create_connection(address, timeout=10):
            with socket.create_connection(address, timeout=10) as extra:
                refused = b"".join(iter(lambda: extra.recv(4096), b""))
            assert refused.startswith(b"HTTP/1.1 503"), refused


async def test_a_pipelined_body_waits_for_the_held_answer_before_its_deadline_starts(tmp_path: Path) -> None:
    """uvicorn reads nothing more while an earlier answer on the connection is held, so the body
    behind it cannot arrive: its deadline starts when the held answer has been sent."""
    async with running_broker(
        make_settings(tmp_path, HELD_POLICY, exchange_server(), limits=QUICK)
    ) as running:
        feed = watch(running)
        async with running.raw() as http, connected(running.url) as stream:
            session = RawSession(http)
            with anyio.fail_after(30):
                await session.open()
                headers = {**session.headers, "Authorization": f"Bearer {AGENT_KEYS['trader']}"}
                call = json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 7,
                        "method": "tools/call",
                        "params": {"name": "place_order", "arguments": BIG_ORDER},
                    }
                ).encode()
                head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                held = f"POST /mcp HTTP/1.1\r\nHost: broker\r\n{head}Content-Type: application/json\r\n"
                await stream.send(f"{held}Content-Length: {len(call)}\r\n\r\n".encode() + call)
                await stream.send(half_a_body("/mcp", AGENT_KEYS["trader"]))
                approval = await feed.opened.receive()
                witness, _ = await cut_after(running.url, half_a_body("/mcp", AGENT_KEYS["trader"]))
                assert witness.startswith(b"HTTP/1.1 408"), witness
                async with running.approver("alice") as alice:
                    decided = await alice.post(f"/api/approvals/{approval.id}/approve")
                    assert decided.status_code == 200, decided.text
                answer = await until_closed(stream)
        released, _, timed_out = answer.partition(b"HTTP/1.1 408 Request Timeout\r\n")
        assert released.startswith(b"HTTP/1.1 200 OK") and b'"quantity":10' in released.replace(b" ", b""), (
            answer
        )
        assert timed_out.endswith(b"(limits.body_timeout)\n"), answer
