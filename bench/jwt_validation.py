"""What OAuth access tokens cost per call, next to API keys.

1. The verifier alone, in process: an API key; a JWT seen before (the verified-token memory);
   a JWT never seen before (full RS256 / ES256 signature and claims check with a cached key).
2. The allowed-call benchmark (as bench/proxy_overhead.py: the demo exchange as upstream, the
   broker in its own process) with an API key and with a JWT, at concurrency 1 and 32.

The authorization server is the test suite's (tests/authserver), run in this process.

    python bench/jwt_validation.py [--calls 3000] [--port-base 18740] [--validations 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from proxy_overhead import ACCEPT, API_KEY, measure, wait_for_port, write_broker_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.config.oauth import OAuthSettings  # noqa: E402
from broker.proxy.auth.api_keys import AgentCredential  # noqa: E402
from broker.proxy.auth.build import agent_verifier  # noqa: E402
from tests.authserver.server import AuthServer  # noqa: E402


async def per_call_us(verify: object, headers: list[bytes]) -> float:
    started = time.perf_counter()
    for header in headers:
        await verify(header)  # type: ignore[operator]
    return (time.perf_counter() - started) / len(headers) * 1e6


async def validation_alone(auth: AuthServer, resource: str, count: int) -> None:
    oauth = OAuthSettings(issuer=auth.issuer, resource=resource, required_scopes=("tools:call",))
    credentials = {"bench": AgentCredential("bench", hashlib.sha256(API_KEY.encode()).hexdigest())}
    chain = agent_verifier(credentials, allow_anonymous=False, oauth=oauth)
    api_only = agent_verifier(credentials, allow_anonymous=False, oauth=None)
    token = f"Bearer {auth.token('bench', aud=resource)}".encode()
    await chain.verify(token)  # fetches the JWKS once
    rows = [
        (
            "API key, no oauth section",
            await per_call_us(api_only.verify, [f"Bearer {API_KEY}".encode()] * count),
        ),
        ("API key beside oauth", await per_call_us(chain.verify, [f"Bearer {API_KEY}".encode()] * count)),
        ("JWT seen before", await per_call_us(chain.verify, [token] * count)),
    ]
    fresh = max(200, count // 20)
    for kid in ("rsa-1", "ec-1"):
        auth.use_key(kid)
        tokens = [f"Bearer {auth.token(f'agent-{n}', aud=resource)}".encode() for n in range(fresh)]
        rows.append((f"JWT never seen, {auth.signing_alg}", await per_call_us(chain.verify, tokens)))
    auth.use_key("rsa-1")
    print(f"verifier alone ({count} calls; {fresh} distinct tokens for the never-seen rows)")
    for name, micros in rows:
        print(f"  {name:<28} {micros:8.2f} us/call")


async def allowed_calls(auth: AuthServer, calls: int, port_base: int) -> None:
    upstream_port, broker_port = port_base, port_base + 1
    resource = f"http://127.0.0.1:{broker_port}/mcp"
    work = Path(tempfile.mkdtemp(prefix="broker-bench-jwt-"))
    write_broker_config(
        work,
        upstream_port,
        broker_port,
        f"oauth: {{issuer: '{auth.issuer}', resource: '{resource}', required_scopes: [tools:call]}}\n",
    )
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
        broker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "serve", "--config", str(work / "broker.yaml"),
            "--log-level", "warning", cwd=REPO, **quiet,
        )  # fmt: skip
        await wait_for_port(broker_port)
        url = f"http://127.0.0.1:{broker_port}/mcp"
        token = auth.token("bench", aud=resource, lifetime=3600)
        print(f"allowed tools/call through the broker, {calls} calls per run")
        line = "{:>4} {:>8} {:>9} {:>8} {:>8} {:>19}"
        print(line.format("conc", "auth", "calls/s", "p50 ms", "p99 ms", "broker CPU ms/call"))
        for concurrency in (1, 32):
            for name, credential in (("API key", API_KEY), ("JWT", token)):
                headers = {**ACCEPT, "Authorization": f"Bearer {credential}"}
                row = await measure(url, headers, calls, concurrency, broker.pid)
                print(
                    line.format(
                        concurrency, name, f"{row['calls_per_s']:.0f}", f"{row['p50_ms']:.2f}",
                        f"{row['p99_ms']:.2f}", f"{row['broker_cpu_ms_per_call']:.3f}",
                    )
                )  # fmt: skip
    finally:
        for process in (broker, upstream):
            if process is not None and process.returncode is None:
                process.terminate()
                await asyncio.wait_for(process.wait(), 10)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--port-base", type=int, default=18740)
    parser.add_argument("--validations", type=int, default=20000)
    args = parser.parse_args()
    with AuthServer() as auth:
        await validation_alone(auth, "http://127.0.0.1:1/mcp", args.validations)
        await allowed_calls(auth, args.calls, args.port_base)


if __name__ == "__main__":
    asyncio.run(main())
