"""Two broker replicas on one PostgreSQL database: cross-replica release latency and throughput.

Starts the demo exchange as a streamable-HTTP upstream and two `broker serve` processes on a
fresh PostgreSQL database (each its own process), then:

* parks N held calls (place_order, require_approval) on replica B at once, approves them one
  at a time through replica A's decisions API, and times, for each, the approval's commit
  (A's 200 response) -> B's answer to the agent with the upstream's result. B learns of the
  decision by LISTEN/NOTIFY; the sweepers run every second, as by default;
* drives allowed tools/call (get_ticker) through replica A alone, then through A and B at
  once with the same total concurrency, with the lean aiohttp client of proxy_overhead.py.

    python bench/replicas.py [--approvals 200] [--calls 3000] [--port-base 18900]
                             [--admin-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from databases import DEFAULT_ADMIN_URL, fresh_postgres_database
from proxy_overhead import ACCEPT, cpu_seconds, drive, open_session, summary, wait_for_port

from broker.approvals import ApprovalStatus
from broker.store.engine import create_store

AGENT_KEY = "bench-agent-key"
APPROVER_TOKEN = "bench-approver-token"


def write_config(work: Path, name: str, port: int, upstream_port: int, database_url: str) -> Path:
    (work / "policy.yaml").write_text(
        'version: "1"\ndefault: deny\nrules:\n'
        "  - tool: get_ticker\n    action: allow\n"
        "  - tool: place_order\n    action: require_approval\n    timeout: 3600\n"
    )
    servers = {"mcpServers": {"exchange": {"url": f"http://127.0.0.1:{upstream_port}/mcp"}}}
    (work / "servers.json").write_text(json.dumps(servers))
    config = work / f"{name}.yaml"
    config.write_text(
        "servers: servers.json\npolicy: policy.yaml\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"agents: {{bench: {{api_key_sha256: {hashlib.sha256(AGENT_KEY.encode()).hexdigest()}}}}}\n"
        f"approvers: {{alice: {{token: {APPROVER_TOKEN}}}}}\n"
        "approvals: {hold_budget: 3600, progress_interval: 3600, sweep_interval: 1}\n"
        f"database_url: {database_url}\n"
    )
    return config


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


async def cross_replica_latency(
    holder_port: int, decider_port: int, database_url: str, approvals: int
) -> tuple[list[float], list[float], float]:
    """Returns (commit -> agent, request sent -> agent, seconds to park them all)."""
    holder_url = f"http://127.0.0.1:{holder_port}/mcp"
    done: dict[int, float] = {}
    finished = {index: asyncio.Event() for index in range(approvals)}
    store = create_store(database_url)
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as http:
            session = await open_session(http, holder_url, {**ACCEPT, "Authorization": f"Bearer {AGENT_KEY}"})

            async def held_call(index: int) -> None:
                arguments = {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": index + 1}
                body = {
                    "jsonrpc": "2.0",
                    "id": index + 1,
                    "method": "tools/call",
                    "params": {"name": "place_order", "arguments": arguments},
                }
                async with http.post(holder_url, json=body, headers=session) as response:
                    payload = await response.json(content_type=None)
                done[index] = time.perf_counter()
                finished[index].set()
                if payload.get("result", {}).get("isError", True):
                    raise RuntimeError(f"held call {index} failed: {payload}")

            started = time.perf_counter()
            calls = [asyncio.create_task(held_call(index)) for index in range(approvals)]
            # The broker is another process: its database is the only signal it gives.
            while await store.pending_count() < approvals:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            parked_in = time.perf_counter() - started
            pending = await store.list(statuses={ApprovalStatus.PENDING}, limit=min(approvals, 1000))

            from_commit: list[float] = []
            from_request: list[float] = []
            headers = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as api:
                for approval in pending:
                    index = int(approval.arguments["price"]) - 1
                    sent = time.perf_counter()
                    approve = f"http://127.0.0.1:{decider_port}/api/approvals/{approval.id}/approve"
                    async with api.post(approve) as response:
                        if response.status != 200:
                            raise RuntimeError(await response.text())
                        committed = time.perf_counter()
                    await asyncio.wait_for(finished[index].wait(), 30)
                    from_commit.append(max(done[index] - committed, 0.0))
                    from_request.append(done[index] - sent)
            await asyncio.gather(*calls)
    finally:
        await store.close()
    return from_commit, from_request, parked_in


async def throughput(ports: list[int], calls: int, concurrency: int, pids: list[int]) -> dict[str, float]:
    headers = {**ACCEPT, "Authorization": f"Bearer {AGENT_KEY}"}
    urls = [f"http://127.0.0.1:{port}/mcp" for port in ports]
    share, per_replica = calls // len(urls), max(concurrency // len(urls), 1)
    await asyncio.gather(*(drive(url, headers, min(500, share), per_replica) for url in urls))  # warm-up
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    latencies = await asyncio.gather(*(drive(url, headers, share, per_replica) for url in urls))
    elapsed = time.perf_counter() - started
    result = summary([latency for run in latencies for latency in run], elapsed)
    result["broker_cpu_ms_per_call"] = (
        (sum(cpu_seconds(pid) for pid in pids) - cpu_before) * 1000 / (share * len(urls))
    )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--approvals", type=int, default=200)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port-base", type=int, default=18900)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    async with fresh_postgres_database(args.admin_url, "bench_replicas") as database_url:
        await run(args, database_url)


async def run(args: argparse.Namespace, database_url: str) -> None:

    work = Path(tempfile.mkdtemp(prefix="broker-replicas-"))
    upstream_port, port_a, port_b = args.port_base, args.port_base + 1, args.port_base + 2
    quiet = {"stdout": asyncio.subprocess.DEVNULL, "stderr": asyncio.subprocess.DEVNULL}
    processes: list[asyncio.subprocess.Process] = []
    try:
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "broker.demo.exchange", "--http", str(upstream_port), **quiet
            )
        )
        await wait_for_port(upstream_port)
        for replica, port in (("a", port_a), ("b", port_b)):
            config = write_config(work, replica, port, upstream_port, database_url)
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "broker",
                    "serve",
                    "--config",
                    str(config),
                    "--log-level",
                    "warning",
                    **quiet,
                )
            )
        await asyncio.gather(wait_for_port(port_a), wait_for_port(port_b))
        broker_a, broker_b = processes[1].pid, processes[2].pid

        from_commit, from_request, parked_in = await cross_replica_latency(
            port_b, port_a, database_url, args.approvals
        )
        one = await throughput([port_a], args.calls, args.concurrency, [broker_a])
        two = await throughput([port_a, port_b], args.calls, args.concurrency, [broker_a, broker_b])

        print(
            f"{args.approvals} held calls parked on replica B in {parked_in:.1f} s (PostgreSQL, LISTEN/NOTIFY)"
        )
        print("approved on replica A, one at a time -> agent on B answered with the upstream result:")
        print(f"  from A's 200 response (decision committed): {percentiles(from_commit)}")
        print(f"  from the approve request being sent:        {percentiles(from_request)}")
        print(f"allowed tools/call (get_ticker), {args.calls} calls, total concurrency {args.concurrency}:")
        line = "  {:<13} {:>8} {:>8} {:>8} {:>19}"
        print(line.format("replicas", "calls/s", "p50 ms", "p99 ms", "broker CPU ms/call"))
        for label, row in (("A", one), ("A + B", two)):
            print(
                line.format(
                    label,
                    f"{row['calls_per_s']:.0f}",
                    f"{row['p50_ms']:.2f}",
                    f"{row['p99_ms']:.2f}",
                    f"{row['broker_cpu_ms_per_call']:.3f}",
                )
            )
        print(f"  two replicas vs one: {two['calls_per_s'] / one['calls_per_s']:.2f}x")
    finally:
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()


if __name__ == "__main__":
    asyncio.run(main())
