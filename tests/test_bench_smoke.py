"""Smoke tests of the benchmarks: each runs at ``--quick`` size and ends with one JSON line holding its figures.

They check that a benchmark runs and reports, not that its goal is met (benchmarks are measurements, not tests).
The ones that start Ray actors or run all four stages take over a minute on a 2-core machine: marked slow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

COMMON = {"benchmark", "quick", "machine", "loadavg_end"}
EXPECTED = {
    "mid_epoch": {"ratio_second_order", "ratio_first_order", "goal_second_order", "goal_first_order",
                  "store_vs_online_speedup", "goal_store_vs_online", "epoch", "store_vs_online", "levers"},
    "store_size": {"bytes_per_pixel_per_attack", "ratio", "goal", "compression_ratio", "success_before_quantisation",
                   "success_after_quantisation", "max_abs_success_change_points", "goal_success_change"},
    "streaming": {"ratio", "goal", "steps_per_second", "loader_sweep", "pick", "ratio_pipeline_default"},
    "memory": {"ratio", "goal", "driver_rss_growth_mib", "store_uncompressed_mib", "object_store_mib", "streaming_runs"},
    "generation_overhead": {"ratio", "goal", "ratio_including_startup", "ratio_steady_state", "ray_steady_blocks_per_second",
                            "plain_steady_blocks_per_second", "ray_fixed_seconds_per_run", "amortised_at_blocks",
                            "outputs_identical"},
    "generation_scaling": {"ratio", "goal", "speedup_2_vs_1_actors", "speedup_2_vs_1_actors_including_startup",
                           "multinode", "multinode_identical", "stores_1_vs_2_actors_identical"},
    "transposed_conv": {"seconds", "relative_to_onednn", "max_abs_error", "fastest", "ratio", "attack"},
    "max_pool": {"kernel", "model", "ratio", "identical", "threads"},
    "online_views": {"seconds", "ratio", "pixels_that_differ", "batch", "steps", "device"},
    "end_to_end": {"stages", "total_stage_seconds", "peak_driver_rss_mib", "peak_tree_anon_mib", "config", "accuracy"},
}


def run_quick(name: str, timeout: int) -> dict:
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("MID_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench.{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    payload = json.loads(lines[-1])  # the last printed line is the JSON result
    assert isinstance(payload, dict)
    missing = (COMMON | EXPECTED[name]) - set(payload)
    assert not missing, f"bench.{name}: JSON lacks {sorted(missing)}"
    assert payload["benchmark"] == name and payload["quick"] is True
    return payload


def test_mid_epoch_quick():
    p = run_quick("mid_epoch", timeout=600)
    assert p["ratio_second_order"] > 0 and p["ratio_first_order"] > 0
    assert p["goal_second_order"]["goal"] == "<= 20" and isinstance(p["goal_second_order"]["met"], bool)


def test_transposed_conv_quick():
    p = run_quick("transposed_conv", timeout=300)
    assert max(p["max_abs_error"].values()) < 1e-3  # every rewrite computes the same op
    assert p["relative_to_onednn"]["onednn"] == 1.0


def test_max_pool_quick():
    p = run_quick("max_pool", timeout=300)
    assert p["identical"] is True  # both pools give the same outputs and input gradients
    assert p["ratio"] > 0


def test_online_views_quick():
    p = run_quick("online_views", timeout=300)
    assert p["ratio"] > 0 and p["steps"] == 5
    assert max(p["pixels_that_differ"].values()) < 0.01  # same draws, same attacks: float rounding at most


def test_store_size_quick():
    p = run_quick("store_size", timeout=600)
    assert 0 < p["bytes_per_pixel_per_attack"] <= 1.0  # zstd never expands uint8 images here


@pytest.mark.ray
def test_streaming_quick():
    p = run_quick("streaming", timeout=600)
    assert p["ratio"] > 0


@pytest.mark.ray
def test_memory_quick():
    p = run_quick("memory", timeout=600)
    assert p["streaming_runs"][0]["streamed"]["rows_streamed"] == p["streaming_runs"][0]["store_rows"]


@pytest.mark.slow
@pytest.mark.ray
def test_generation_overhead_quick():
    p = run_quick("generation_overhead", timeout=900)
    assert p["outputs_identical"] is True  # the Ray store equals the plain loop's arrays, bit for bit


@pytest.mark.slow
@pytest.mark.ray
def test_generation_scaling_quick():
    p = run_quick("generation_scaling", timeout=1200)
    assert p["stores_1_vs_2_actors_identical"] is True
    assert p["multinode_identical"] is True


@pytest.mark.slow
@pytest.mark.ray
def test_end_to_end_quick():
    p = run_quick("end_to_end", timeout=1500)
    assert set(p["stages"]) == {"teacher", "pool", "mid", "evaluation"}
    assert p["accuracy"], "the figure must say what accuracy the stage times bought"
    for row, acc in p["accuracy"].items():
        assert 0 <= acc["average"] <= 100 and 0 <= acc["benign"] <= 100, (row, acc)
        if row.startswith("whitebox/"):  # attacks on the model itself never beat its clean accuracy
            assert acc["average"] <= acc["benign"] + 1e-6, (row, acc)
