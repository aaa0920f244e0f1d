"""Smoke tests of the benchmarks: each runs at ``--quick`` size and ends with one JSON line naming itself.

They check that a benchmark runs and reports, not what it measures (benchmarks are measurements, recorded in
docs/benchmarks.md, not tests). All but the cheapest start Ray or train for a while: marked slow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_quick(name: str, timeout: int) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("MID_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench.{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    payload = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
    assert payload["benchmark"] == name and payload["quick"] is True
    return payload


def test_store_size_quick():
    run_quick("store_size", timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kernels", "mid_epoch", "streaming", "memory", "generation_overhead",
                                  "generation_scaling", "end_to_end"])
def test_benchmark_quick(name):
    run_quick(name, timeout=1800)
