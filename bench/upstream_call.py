"""CPU the broker's upstream side spends per forwarded tools/call.

Runs a trivial MCP server (one ``echo`` tool) in a child process, connects an `UpstreamPool`
to it and makes sequential ``call_tool`` calls. Only this process's CPU time is counted
(``getrusage(RUSAGE_SELF)``), so the number is the client side alone: JSON encoding, the HTTP
exchange through aiohttp, SSE or JSON parsing and the pool's bookkeeping.

    python bench/upstream_call.py [--transport http|http-json|stdio] [--calls 3000] [--loop asyncio|uvloop]
                                  [--agent-headers]

``--agent-headers`` configures a per-agent header template (``X-Agent: {agent}``) and makes each
call for an agent: the cost of the credentials path (headers rendered once per agent, then cached).

``http`` answers with an event stream (the SDK server's default), ``http-json`` with plain JSON.
The broker runs under uvicorn, which uses uvloop when it is installed, hence ``--loop``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.settings import UpstreamAuth
from broker.proxy.upstream.pool import UpstreamPool
from broker.proxy.upstream.spec import HttpServer, ServerSpec, StdioServer


def serve(mode: str, port: int) -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        return text

    if mode == "stdio":
        server.run("stdio")
        return
    app = server.streamable_http_app(json_response=mode == "http-json")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # uvicorn leaves a socket it is handed as it is: without this, Nagle and delayed ACKs
    # add ~40 ms to every answer on a kept-alive connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    asyncio.run(uvicorn.Server(uvicorn.Config(app, log_level="warning")).serve([sock]))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(spec: ServerSpec, calls: int, caller: UpstreamCaller | None = None) -> None:
    async with UpstreamPool({spec.name: spec}, environ=os.environ) as pool:
        await pool.wait_ready(30)
        echo = pool.resolve("echo")
        if echo is None:
            raise SystemExit(f"upstream did not come up: {pool.status()}")
        arguments = {"text": "hello"}
        for _ in range(300):
            await pool.call_tool(echo, arguments, caller=caller)
        latencies = []
        cpu_before, wall_before = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            started = time.perf_counter()
            await pool.call_tool(echo, arguments, caller=caller)
            latencies.append(time.perf_counter() - started)
        cpu, wall = cpu_seconds() - cpu_before, time.perf_counter() - wall_before
    latencies.sort()
    print(
        f"{calls} calls: {cpu / calls * 1000:.3f} ms CPU per call (client process), "
        f"{calls / wall:.0f} calls/s, latency p50 {statistics.median(latencies) * 1000:.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["http", "http-json", "stdio"], default="http")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--agent-headers", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.transport == "stdio":
        spec: ServerSpec = StdioServer("bench", sys.executable, (__file__, "--serve", "stdio", "0"), {}, None)
        asyncio.run(measure(spec, args.calls))
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", args.transport, "0"], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[-1])
        auth = UpstreamAuth(agent_headers={"X-Agent": "{agent}"}) if args.agent_headers else None
        spec = HttpServer("bench", f"http://127.0.0.1:{port}/mcp", {}, auth=auth)
        caller = UpstreamCaller("bench-agent") if args.agent_headers else None
        asyncio.run(measure(spec, args.calls, caller))
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
