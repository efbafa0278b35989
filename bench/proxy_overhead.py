"""Allowed tools/call through the broker vs. directly against the same upstream.

Starts the demo exchange as a streamable-HTTP upstream and the broker in front of it (each its
own process), then drives both with the same lean aiohttp JSON-RPC client at concurrency 1 and
32. Reports calls/s, latency p50/p99 and the broker's CPU milliseconds per call (from
/proc/<pid>/stat, so it counts everything the broker process did, including HTTP parsing).

    python bench/proxy_overhead.py [--calls 3000] [--port-base 18700]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

API_KEY = "bench-key"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_for_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def open_session(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    async with http.post(url, json=init, headers=headers) as response:
        await response.read()
        session = {
            **headers,
            "Mcp-Session-Id": response.headers["mcp-session-id"],
            "Mcp-Protocol-Version": "2025-11-25",
        }
    async with http.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
    ) as r:
        await r.read()
    return session


async def drive(url: str, headers: dict[str, str], calls: int, concurrency: int) -> list[float]:
    # Ids must be unique within a session: a server matches responses to requests by id.
    template = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "tools/call",
            "params": {"name": "get_ticker", "arguments": {"symbol": "BTCUSD"}},
        },
        separators=(",", ":"),
    ).encode()
    head, tail = template.split(b'"id":0', 1)
    next_id = itertools.count(1)
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        session = await open_session(http, url, headers)
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                body = head + b'"id":' + str(next(next_id)).encode() + tail
                async with http.post(url, data=body, headers=session) as response:
                    payload = await response.read()
                    if response.status != 200 or b"97250" not in payload:
                        raise RuntimeError(f"bad response {response.status}: {payload[:200]!r}")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "calls_per_s": len(ordered) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


async def measure(
    url: str, headers: dict[str, str], calls: int, concurrency: int, pid: int | None
) -> dict[str, float]:
    await drive(
        url, headers, min(500, calls), concurrency
    )  # warm-up: connections, caches, JIT-free but lazy imports
    cpu_before = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    latencies = await drive(url, headers, calls, concurrency)
    elapsed = time.perf_counter() - started
    result = summary(latencies, elapsed)
    if pid:
        result["broker_cpu_ms_per_call"] = (cpu_seconds(pid) - cpu_before) * 1000 / calls
    return result


def write_broker_config(work: Path, upstream_port: int, broker_port: int, extra: str = "") -> Path:
    """The allowed-call setup every broker benchmark runs: `get_ticker` allowed on the demo exchange,
    one API-key agent, SQLite; `extra` adds lines to broker.yaml. Returns the broker.yaml path."""
    (work / "policy.yaml").write_text(
        'version: "1"\ndefault: deny\nrules:\n  - tool: get_ticker\n    action: allow\n'
    )
    (work / "servers.json").write_text(
        json.dumps({"mcpServers": {"exchange": {"url": f"http://127.0.0.1:{upstream_port}/mcp"}}})
    )
    config = work / "broker.yaml"
    config.write_text(
        "servers: servers.json\npolicy: policy.yaml\n"
        f"listen: {{host: 127.0.0.1, port: {broker_port}}}\n"
        f"agents: {{bench: {{api_key_sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}}}}}\n"
        f"database_url: sqlite:///{work / 'broker.db'}\n" + extra
    )
    return config


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--port-base", type=int, default=18700)
    args = parser.parse_args()
    upstream_port, broker_port = args.port_base, args.port_base + 1
    work = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    write_broker_config(work, upstream_port, broker_port)
    quiet = {
        "stdout": asyncio.subprocess.DEVNULL,
        "stderr": None if os.environ.get("BENCH_VERBOSE") else asyncio.subprocess.DEVNULL,
    }
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.demo.exchange", "--http", str(upstream_port), **quiet
    )
    broker = None
    try:
        await wait_for_port(upstream_port)
        broker_command = [
            "-m",
            "broker",
            "serve",
            "--config",
            str(work / "broker.yaml"),
            "--log-level",
            "warning",
        ]
        broker = await asyncio.create_subprocess_exec(sys.executable, *broker_command, **quiet)
        await wait_for_port(broker_port)
        direct_url = f"http://127.0.0.1:{upstream_port}/mcp"
        broker_url = f"http://127.0.0.1:{broker_port}/mcp"
        authorized = {**ACCEPT, "Authorization": f"Bearer {API_KEY}"}
        rows = []
        for concurrency in (1, 32):
            direct = await measure(direct_url, ACCEPT, args.calls, concurrency, None)
            proxied = await measure(broker_url, authorized, args.calls, concurrency, broker.pid)
            rows.append((concurrency, direct, proxied))
        print(
            f"allowed tools/call, {args.calls} calls per run; upstream: demo exchange (SDK MCPServer, streamable HTTP)"
        )
        line = "{:>4} {:>7} {:>9} {:>8} {:>8} {:>19} {:>9}"
        print(line.format("conc", "path", "calls/s", "p50 ms", "p99 ms", "broker CPU ms/call", "vs direct"))
        for concurrency, direct, proxied in rows:
            ratio = proxied["calls_per_s"] / direct["calls_per_s"]
            for name, row, cpu, versus in (
                ("direct", direct, "", ""),
                ("broker", proxied, f"{proxied['broker_cpu_ms_per_call']:.3f}", f"{ratio:.2f}x"),
            ):
                print(
                    line.format(
                        concurrency,
                        name,
                        f"{row['calls_per_s']:.0f}",
                        f"{row['p50_ms']:.2f}",
                        f"{row['p99_ms']:.2f}",
                        cpu,
                        versus,
                    )
                )
    finally:
        for process in (broker, upstream):
            if process is not None and process.returncode is None:
                process.terminate()
                await asyncio.wait_for(process.wait(), 10)


if __name__ == "__main__":
    asyncio.run(main())
