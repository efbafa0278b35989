"""The policy micro-benchmark still runs (its timings are judged by people, not by this test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "policy_eval.py"


def test_policy_benchmark_runs_and_reports_every_workload() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--iterations", "3000", "--max-mean-us", "10000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1318 tools with their own" in result.stdout
    for workload in ("exact", "glob", "default", "conditional", "agent", "mix"):
        assert f"\n{workload} " in result.stdout
    assert ": OK" in result.stdout


def test_policy_benchmark_fails_when_over_its_limit() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--iterations", "600", "--max-mean-us", "0.000001"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "TOO SLOW" in result.stdout
