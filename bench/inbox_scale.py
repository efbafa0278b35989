"""The web inbox and the decisions API with a long queue: latency of every list page at N pending.

Seeds a fresh database with N pending approvals (and a tenth as many decided ones, for the
history) by bulk inserts straight through SQL, starts the broker on it, signs in as an approver
and times sequential requests over one kept-alive connection to the real server: the inbox
page, its filters and search, the history page, the export's first page, one call's page,
and the decisions API's pending listing, its filters and cursor pages.

    python bench/inbox_scale.py [--pending 100000] [--requests 100] [--postgres [--admin-url URL]]

Prints p50 / p99 / max per request in milliseconds; the first line, a static file, is the floor
that the machine and the HTTP stack add to every request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent))
from databases import DEFAULT_ADMIN_URL, fresh_postgres_database
from proxy_overhead import wait_for_port

from broker.approvals.ports import ListPosition
from broker.channels.web import hash_password
from broker.store.database import build_engine, writing
from broker.store.migrate import upgrade
from broker.store.tables import approvals

AGENT_KEY = "bench-agent-key"
APPROVER_TOKEN = "bench-approver-token"
PASSWORD = "bench-password"
AGENTS = [f"agent-{n:02d}" for n in range(20)]
TOOLS = [f"tool_{n:02d}" for n in range(30)]
HISTORY_STATUSES = ["approved", "denied", "completed", "expired", "failed"]
BATCH = 5000


def write_config(work: Path, port: int, database_url: str) -> Path:
    (work / "policy.yaml").write_text('version: "1"\ndefault: deny\nrules: []\n')
    servers = {
        "mcpServers": {"exchange": {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]}}
    }
    (work / "servers.json").write_text(json.dumps(servers))
    digest = hashlib.sha256(AGENT_KEY.encode()).hexdigest()
    password_hash = hash_password(PASSWORD, n=2**10)
    config = work / "broker.yaml"
    config.write_text(
        "servers: servers.json\npolicy: policy.yaml\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"agents: {{bench: {{api_key_sha256: {digest}}}}}\n"
        f'approvers: {{alice: {{token: {APPROVER_TOKEN}, password_hash: "{password_hash}"}}}}\n'
        "approvals: {hold_budget: 3600, progress_interval: 3600, sweep_interval: 60}\n"
        f"database_url: {database_url}\n"
    )
    return config


def row(index: int, now: datetime, status: str) -> dict[str, Any]:
    created = now - timedelta(seconds=index * 0.5)
    # One call in fifty carries a large argument, as pasted documents and SQL do.
    arguments: dict[str, Any] = {"symbol": "BTCUSD", "quantity": index % 97, "price": index}
    if index % 50 == 0:
        arguments["note"] = "x" * 20_000
    decided = status != "pending"
    return {
        "id": f"01BENCH{index:019d}",
        "status": status,
        "agent": AGENTS[index % len(AGENTS)],
        "session_id": None,
        "server": "exchange",
        "tool": TOOLS[(index // 3) % len(TOOLS)],
        "upstream_tool": "place_order",
        "arguments": arguments,
        "arguments_hash": hashlib.sha256(str(index).encode()).hexdigest(),
        "request_key": hashlib.sha256(f"key{index}".encode()).hexdigest(),
        "policy_revision": "bench",
        "rule": "bench",
        "rule_reason": "seeded by bench/inbox_scale.py",
        "approvers": [],
        "channels": [],
        "created_at": created,
        "expires_at": now + timedelta(days=1),
        "decided_by": "alice" if decided else None,
        "decided_at": created + timedelta(seconds=1) if decided else None,
        "decided_via": "web" if decided else None,
        "decision_reason": "bench" if decided else None,
        "argument_order": list(arguments),
        "version": 2 if decided else 1,
    }


async def seed(database_url: str, pending: int) -> float:
    started = time.perf_counter()
    await upgrade(database_url)
    engine = build_engine(database_url)
    now = datetime.now(UTC)
    decided = pending // 10
    try:
        async with writing(engine).begin() as conn:
            for first in range(0, pending + decided, BATCH):
                rows = [
                    row(i, now, "pending" if i < pending else HISTORY_STATUSES[i % len(HISTORY_STATUSES)])
                    for i in range(first, min(first + BATCH, pending + decided))
                ]
                await conn.execute(insert(approvals), rows)
            if conn.dialect.name == "postgresql":
                await conn.exec_driver_sql("ANALYZE approvals")
            else:
                await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()
    return time.perf_counter() - started


async def sign_in(http: httpx2.AsyncClient) -> None:
    form = await http.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None, form.text[:200]
    response = await http.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token.group(1), "next": "/"}
    )
    if response.status_code != 303:
        raise RuntimeError(f"sign-in failed: {response.status_code} {response.text[:200]}")


async def timed(http: httpx2.AsyncClient, path: str, requests: int, **kwargs: Any) -> list[float]:
    for _ in range(3):
        await http.get(path, **kwargs)
    took = []
    for _ in range(requests):
        started = time.perf_counter()
        response = await http.get(path, **kwargs)
        took.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return sorted(took)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--port", type=int, default=18810)
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database, not SQLite")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="broker-inbox-"))
    if args.postgres:
        async with fresh_postgres_database(args.admin_url, "bench_inbox") as database_url:
            await run(args, work, database_url)
    else:
        await run(args, work, f"sqlite:///{work / 'broker.db'}")


async def run(args: argparse.Namespace, work: Path, database_url: str) -> None:
    seeded_in = await seed(database_url, args.pending)
    backend = database_url.split(":", 1)[0]
    print(
        f"backend {backend}: {args.pending} pending + {args.pending // 10} decided seeded in {seeded_in:.1f} s"
    )
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
    try:
        await wait_for_port(args.port)
        base = f"http://127.0.0.1:{args.port}"
        async with httpx2.AsyncClient(base_url=base, timeout=60) as web:
            await sign_in(web)
            api = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
            first = (await web.get("/api/approvals?status=pending", headers=api)).json()
            deep_id = f"01BENCH{args.pending // 2:019d}"
            deep = (await web.get(f"/api/approvals/{deep_id}", headers=api)).json()
            deep_cursor = ListPosition(datetime.fromisoformat(deep["created_at"]), deep_id).token()
            pages: list[tuple[str, str, dict[str, Any]]] = [
                # No database at all: what this machine adds to every request right now.
                ("floor: a static file", "/static/inbox.css", {}),
                ("inbox page", "/", {}),
                ("inbox, agent filter", f"/?agent={AGENTS[7]}", {}),
                ("inbox, tool filter", f"/?tool={TOOLS[12]}", {}),
                ("inbox, search (matches)", "/?q=tool_1", {}),
                ("inbox, search (no match)", "/?q=nothing-like-this", {}),
                ("inbox, search (approval id)", f"/?q={deep_id}", {}),
                ("inbox live fragment", "/inbox/rows", {}),
                ("one call's page", f"/approvals/{deep_id}", {}),
                ("history page", "/history", {}),
                ("history, agent filter", f"/history?agent={AGENTS[3]}", {}),
                ("history, status filter", "/history?status=denied", {}),
                ("API pending", "/api/approvals?status=pending", {"headers": api}),
                ("API pending, agent", f"/api/approvals?status=pending&agent={AGENTS[7]}", {"headers": api}),
                ("API pending, tool", f"/api/approvals?status=pending&tool={TOOLS[12]}", {"headers": api}),
                (
                    "API pending, next page",
                    f"/api/approvals?status=pending&cursor={first['next_cursor']}",
                    {"headers": api},
                ),
                (
                    "API pending, page at the middle",
                    f"/api/approvals?status=pending&cursor={deep_cursor}",
                    {"headers": api},
                ),
            ]
            print(f"{'request':34} {'p50':>8} {'p99':>8} {'max':>8}   ms over {args.requests} requests")
            for name, path, kwargs in pages:
                took = await timed(web, path, args.requests, **kwargs)
                p99 = took[max(0, int(len(took) * 0.99) - 1)]
                print(f"{name:34} {statistics.median(took):8.1f} {p99:8.1f} {took[-1]:8.1f}")
    finally:
        broker.terminate()
        try:
            await asyncio.wait_for(broker.wait(), 30)
        except TimeoutError:
            broker.kill()


if __name__ == "__main__":
    asyncio.run(main())
