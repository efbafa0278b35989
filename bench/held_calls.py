"""Many concurrently held calls on one broker: memory per held call and decision-to-release latency.

Starts the broker (demo exchange upstream over stdio) with `place_order` requiring approval,
parks N calls at once from one agent session (distinct prices, so none attach to another),
measures the broker's resident memory before and after, then approves a sample of them one
at a time through the decisions API and times, for each, decision request sent -> the agent's
held call answered with the upstream's result.

    python bench/held_calls.py [--held 10000] [--sample 500] [--postgres [--admin-url URL]]

With --postgres the broker runs on a fresh PostgreSQL database created for the run.
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
from proxy_overhead import ACCEPT, open_session, wait_for_port

from broker.approvals import ApprovalStatus
from broker.store.engine import create_store

AGENT_KEY = "bench-agent-key"
APPROVER_TOKEN = "bench-approver-token"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def write_config(work: Path, port: int, database_url: str) -> Path:
    (work / "policy.yaml").write_text(
        'version: "1"\ndefault: deny\nrules:\n  - tool: place_order\n    action: require_approval\n    timeout: 3600\n'
    )
    servers = {
        "mcpServers": {"exchange": {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]}}
    }
    (work / "servers.json").write_text(json.dumps(servers))
    digest = hashlib.sha256(AGENT_KEY.encode()).hexdigest()
    config = work / "broker.yaml"
    config.write_text(
        "servers: servers.json\npolicy: policy.yaml\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"agents: {{bench: {{api_key_sha256: {digest}}}}}\n"
        f"approvers: {{alice: {{token: {APPROVER_TOKEN}}}}}\n"
        "approvals: {hold_budget: 3600, progress_interval: 3600, sweep_interval: 1}\n"
        f"database_url: {database_url}\n"
    )
    return config


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--held", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--port", type=int, default=18800)
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database, not SQLite")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="broker-held-"))
    if args.postgres:
        async with fresh_postgres_database(args.admin_url, "bench_held") as database_url:
            await run(args, work, database_url)
    else:
        await run(args, work, f"sqlite:///{work / 'broker.db'}")


async def run(args: argparse.Namespace, work: Path, database_url: str) -> None:
    config = write_config(work, args.port, database_url)
    broker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "serve",
        "--config",
        str(config),
        "--log-level",
        "warning",
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{args.port}/mcp"
    store = create_store(database_url)
    done: dict[int, float] = {}
    finished: dict[int, asyncio.Event] = {}
    try:
        await wait_for_port(args.port)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            session = await open_session(http, url, {**ACCEPT, "Authorization": f"Bearer {AGENT_KEY}"})
            baseline = rss_kib(broker.pid)

            async def held_call(index: int) -> None:
                body = {
                    "jsonrpc": "2.0",
                    "id": index + 1,
                    "method": "tools/call",
                    "params": {
                        "name": "place_order",
                        "arguments": {"symbol": "BTCUSD", "side": "buy", "quantity": 1, "price": index + 1},
                    },
                }
                async with http.post(url, json=body, headers=session) as response:
                    payload = await response.json(content_type=None)
                done[index] = time.perf_counter()
                finished[index].set()
                if payload.get("result", {}).get("isError"):
                    raise RuntimeError(f"call {index} failed: {payload}")

            for index in range(args.held):
                finished[index] = asyncio.Event()
            calls = []
            started = time.perf_counter()
            for first in range(0, args.held, 500):
                calls += [
                    asyncio.create_task(held_call(i)) for i in range(first, min(first + 500, args.held))
                ]
                # The broker is another process: its database is the only signal it gives.
                while await store.pending_count() < min(first + 500, args.held):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            parked_in = time.perf_counter() - started
            held_rss = rss_kib(broker.pid)

            pending = await store.list(statuses={ApprovalStatus.PENDING}, limit=min(args.sample, 500))
            latencies = []
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {APPROVER_TOKEN}"}) as api:
                for approval in pending[: args.sample]:
                    index = int(approval.arguments["price"]) - 1
                    sent = time.perf_counter()
                    async with api.post(
                        f"http://127.0.0.1:{args.port}/api/approvals/{approval.id}/approve"
                    ) as r:
                        if r.status != 200:
                            raise RuntimeError(await r.text())
                    await asyncio.wait_for(finished[index].wait(), 30)
                    latencies.append(done[index] - sent)
            latencies.sort()
            backend = database_url.split(":", 1)[0]
            print(f"backend {backend}: {args.held} held calls parked in {parked_in:.1f} s")
            print(
                f"broker RSS {baseline / 1024:.0f} MiB before, {held_rss / 1024:.0f} MiB with {args.held} held: "
                f"{(held_rss - baseline) / args.held:.1f} KiB per held call"
            )
            print(
                f"decision -> release -> agent answered, {len(latencies)} approvals one at a time: "
                f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
                f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
            )
            for call in calls:
                call.cancel()
    finally:
        await store.close()
        broker.terminate()
        try:
            await asyncio.wait_for(broker.wait(), 30)
        except TimeoutError:
            broker.kill()


if __name__ == "__main__":
    asyncio.run(main())
