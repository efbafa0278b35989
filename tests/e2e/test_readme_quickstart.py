"""The README's Quickstart, run as written against a real `broker serve --demo` process.

The commands come from the fenced `sh` blocks of the Quickstart section. Two substitutions only:
`.venv/bin/broker` is this interpreter's `python -m broker` (the `python3 -m venv ... pip install`
steps before it are what .ci/run checks in a fresh virtualenv), and the port: `serve` gets a free
`--port`, the other commands find the broker through `BROKER_URL`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e.test_serve_process import REPO, serve

INSTALL = ["python3 -m venv .venv", ".venv/bin/pip install -e ."]


def quickstart_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    commands = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert commands[-1] == "bash .ci/run"  # the whole CI: not run from inside its own test suite
    return commands[:-1]


def as_run_here(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == ".venv/bin/broker", command
    return [sys.executable, "-m", "broker", *words[1:]]


def test_the_quickstart_reaches_a_held_call_as_written(tmp_path: Path) -> None:
    start, *after = quickstart_commands()
    steps = [step.strip() for step in start.split("&&")]
    assert steps[:-1] == INSTALL and steps[-1] == ".venv/bin/broker serve --demo"
    assert after == [
        ".venv/bin/broker demo calls",
        ".venv/bin/broker approvals list --token demo-approver-token",
    ]

    with serve(as_run_here(steps[-1])[4:], tmp_path) as (_, url):
        environ = {**os.environ, "BROKER_URL": url}
        with httpx.Client(base_url=url, timeout=30) as http:
            # The empty inbox says how to get a held call
            form = http.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert csrf is not None
            signed_in = http.post(
                "/login",
                data={"username": "demo", "password": "demo", "csrf_token": csrf.group(1), "next": "/"},
            )
            assert signed_in.status_code == 303, signed_in.text
            empty = http.get("/").text
            assert "Nothing is waiting" in empty and "<code>broker demo calls</code>" in empty

            calls = subprocess.run(
                as_run_here(after[0]), env=environ, capture_output=True, text=True, timeout=120, check=False
            )
            assert calls.returncode == 0, calls.stderr
            out = calls.stdout
            assert '"price": 97250.0' in out  # allowed
            assert (
                "unknown symbol 'DOGEUSD'; known symbols: BTCUSD, ETHUSD, SOLUSD" in out
            )  # the tool's own words
            assert "withdrawals are never made by agents" in out  # denied, with the policy's reason
            assert "PENDING HUMAN APPROVAL" in out  # held

            pending = http.get(
                "/api/approvals",
                params={"status": "pending"},
                headers={"Authorization": "Bearer demo-approver-token"},
            ).json()["approvals"]
            assert [item["tool"] for item in pending] == ["place_order"]
            held = pending[0]["id"]
            assert f"Approval {held} waits in the inbox" in out
            assert held in http.get("/").text

            listed = subprocess.run(
                as_run_here(after[1]), env=environ, capture_output=True, text=True, timeout=60, check=False
            )
            assert listed.returncode == 0, listed.stderr
            assert held in listed.stdout and "pending" in listed.stdout

            # The approve line `broker demo calls` printed works as printed
            approve_line = next(line.strip() for line in out.splitlines() if "approvals approve" in line)
            approved = subprocess.run(
                [sys.executable, "-m", *shlex.split(approve_line)],
                env=environ,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert approved.returncode == 0, approved.stderr
            assert f"{held}: approved by demo" in approved.stdout
