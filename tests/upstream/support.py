"""Helpers the upstream tests share: the demo servers and a notification collector."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from broker.proxy.upstream.base import JsonObject
from broker.proxy.upstream.spec import HttpServer, SseServer, StdioServer

SERVERS = Path(__file__).parent / "servers"
DEMO_SERVER = SERVERS / "demo_server.py"
PAGED_SERVER = SERVERS / "paged_server.py"
READY_TIMEOUT = 15.0


def demo_stdio(name: str = "demo") -> StdioServer:
    return StdioServer(name=name, command=sys.executable, args=(str(DEMO_SERVER), "stdio"), env={}, cwd=None)


def unused_port() -> int:
    """A port nothing listens on (until something else happens to take it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Notifications:
    """Collects notifications and lets a test wait, bounded, for one that matches."""

    def __init__(self) -> None:
        self.received: list[JsonObject] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: JsonObject) -> None:
        self.received.append(message)
        self._arrived.set()

    def methods(self) -> list[str]:
        return [message["method"] for message in self.received]

    async def wait_for(self, method: str, *, count: int = 1, timeout: float = 10.0) -> list[JsonObject]:
        with anyio.fail_after(timeout):
            while True:
                matching = [message for message in self.received if message["method"] == method]
                if len(matching) >= count:
                    return matching
                self._arrived = anyio.Event()
                await self._arrived.wait()


class DemoHttpServer:
    """The demo server in its own process, serving HTTP on a port the OS picked."""

    def __init__(self, mode: str, *, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(DEMO_SERVER), mode, "0"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
        self.port = 0
        self.mode = mode
        self.scheme = "https" if env and env.get("DEMO_TLS_CERT") else "http"

    def wait_ready_blocking(self) -> None:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(READY_TIMEOUT):
                raise TimeoutError(f"demo server ({self.mode}) not ready within {READY_TIMEOUT} s")
        line = self.process.stdout.readline()
        if not line.startswith(b"listening on "):
            raise RuntimeError(f"demo server did not start: {line!r}")
        self.port = int(line.split()[-1])

    async def wait_ready(self) -> None:
        await anyio.to_thread.run_sync(self.wait_ready_blocking)

    @property
    def url(self) -> str:
        path = "/sse" if self.mode == "sse" else "/mcp"
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def spec(self, name: str = "demo") -> HttpServer | SseServer:
        if self.mode == "sse":
            return SseServer(name=name, url=self.url, headers={})
        return HttpServer(name=name, url=self.url, headers={})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=READY_TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()


@asynccontextmanager
async def started(servers: Mapping[str, DemoHttpServer]) -> AsyncIterator[Mapping[str, DemoHttpServer]]:
    """Waits until every server is ready, and stops them all when the block ends."""
    try:
        for server in servers.values():
            await server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()
