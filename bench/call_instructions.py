"""CPU instructions the broker spends per allowed tools/call, counted by valgrind (callgrind).

`proxy_overhead.py` measures time, and on this shared 2-core machine time scatters by a third
between runs, so a 10% change in the broker's cost per call cannot be seen there. Instructions
executed do not depend on what else the machine runs: two runs of the same code agree to about
1%. This script starts the demo exchange upstream as usual and the broker under callgrind, then:

1. warms up (connections, caches, lazy imports);
2. counts an idle window (no calls): the background work (sweeper, store health probe, feeds)
   per second;
3. counts a busy window of ``--calls`` allowed calls at concurrency 1, and subtracts the idle
   rate over the busy window's length, which leaves the instructions per call.

    python bench/call_instructions.py [--calls 300] [--idle 20] [--pythonpath DIR]

``--pythonpath`` runs the broker from another checkout (for example a `git worktree` of an older
commit), so two revisions can be compared on the same machine. Needs `valgrind` on PATH; the
broker runs about 50 times slower under it, so keep ``--calls`` in the hundreds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proxy_overhead import ACCEPT, API_KEY, drive, wait_for_port, write_broker_config  # noqa: E402

SUMMARY = re.compile(rb"^summary:\s*(\d+)", re.MULTILINE)


def instructions(dump: Path) -> int:
    found = SUMMARY.search(dump.read_bytes())
    if found is None:
        raise RuntimeError(f"no summary line in {dump}")
    return int(found.group(1))


async def callgrind_control(*arguments: str) -> None:
    """``-z PID`` zeroes the counts; ``-d LABEL PID`` writes those since then to a new numbered file."""
    control = await asyncio.create_subprocess_exec(
        "callgrind_control", *arguments, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, error = await control.communicate()
    if control.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(arguments)}: {error.decode()}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of the idle window")
    parser.add_argument("--pythonpath", default=str(ROOT))
    parser.add_argument("--port-base", type=int, default=18760)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")

    upstream_port, broker_port = args.port_base, args.port_base + 1
    work = Path(tempfile.mkdtemp(prefix="broker-instructions-"))
    write_broker_config(work, upstream_port, broker_port)
    env = {**os.environ, "PYTHONPATH": args.pythonpath}
    quiet = {"stdout": asyncio.subprocess.DEVNULL, "stderr": asyncio.subprocess.DEVNULL}
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.demo.exchange", "--http", str(upstream_port), env=env, **quiet
    )
    broker = None
    try:
        await wait_for_port(upstream_port)
        out = work / "callgrind.out"
        broker = await asyncio.create_subprocess_exec(
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--config",
            str(work / "broker.yaml"),
            "--log-level",
            "warning",
            env=env,
            **quiet,
        )
        await wait_for_port(broker_port, within=600)
        url = f"http://127.0.0.1:{broker_port}/mcp"
        headers = {**ACCEPT, "Authorization": f"Bearer {API_KEY}"}
        await drive(url, headers, 100, 1)

        await callgrind_control("-z", str(broker.pid))
        idle_started = time.monotonic()
        await asyncio.sleep(args.idle)
        await callgrind_control("-d", "idle", str(broker.pid))
        idle_seconds = time.monotonic() - idle_started
        busy_started = time.monotonic()
        await drive(url, headers, args.calls, 1)
        await callgrind_control("-d", "busy", str(broker.pid))
        busy_seconds = time.monotonic() - busy_started

        idle = instructions(Path(f"{out}.1"))
        busy = instructions(Path(f"{out}.2"))
        idle_rate = idle / idle_seconds
        per_call = (busy - idle_rate * busy_seconds) / args.calls
        print(f"broker from {args.pythonpath}")
        print(f"idle (background work): {idle_rate / 1e6:.2f} M instructions/s")
        print(
            f"allowed tools/call, concurrency 1, {args.calls} calls: "
            f"{per_call / 1e3:.0f} k instructions per call (busy window {busy_seconds:.1f} s)"
        )
    finally:
        for process in (broker, upstream):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(process.wait(), 300)
                except TimeoutError:
                    process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
