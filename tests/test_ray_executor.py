"""The Ray executor (Ray Data actors, Ray Train workers) gives what the single-process executor gives.

One experiment at tiny size through both executors, on the colour path (the embedded colour_digits stand-in, a
small-width ResNet-18 with BatchNorm): the same stores byte for byte, the same weights (one training worker) and the
same evaluation table. Then what only Ray has: several training workers in lockstep, and a
generation actor killed mid-run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.paths import ExperimentPaths

from test_experiment import REPO, assert_same_weights, inputs_of

# ~3 min of Ray start-ups: outside the default suite; .ci/run runs this module right after it
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]
TINY = REPO / "configs" / "tiny_colour_test.yaml"
SMALL: list[str] = []


def stores_of(root: Path) -> dict[str, dict[str, np.ndarray]]:
    from storage_schemas import open_store

    out = {}
    for path in sorted((root / "stores").glob("*.zarr")):
        store = open_store(path, require_complete=True)
        out[path.name] = store.read_rows(0, store.num_rows)
    return out


@pytest.fixture(scope="module")
def both(ray_cluster, tmp_path_factory):
    runs = {}
    for executor in ("local", "ray"):
        out = tmp_path_factory.mktemp(executor)
        assert main(["run", "--config", str(TINY), "--executor", executor, "--set", f"output_dir={out}", *SMALL]) == 0
        runs[executor] = out
    return runs


def test_both_executors_write_the_same_stores(both):
    local, ray = stores_of(both["local"]), stores_of(both["ray"])
    assert set(local) == set(ray) == {"pool_train.zarr", "paper_test.zarr"}
    for name in local:
        assert local[name].keys() == ray[name].keys()
        for column in local[name]:
            assert np.array_equal(local[name][column], ray[name][column]), (name, column)


def test_both_executors_train_the_same_weights(both):
    for role in ("teacher", "mid"):
        assert_same_weights(both["local"] / "models" / f"{role}.pt", both["ray"] / "models" / f"{role}.pt")


def test_both_executors_give_the_same_table(both):
    tables = {e: json.loads((out / "evaluation" / "results.json").read_text())["rows"] for e, out in both.items()}
    strip = [{k: v for k, v in r.items() if k != "sanity_warnings"} for r in tables["local"]]
    assert strip == [{k: v for k, v in r.items() if k != "sanity_warnings"} for r in tables["ray"]]


def test_two_training_workers_end_every_step_with_identical_parameters(both, tmp_path):
    from mid_core.checkpoint import read_checkpoint

    out = inputs_of(ExperimentPaths(both["ray"]), tmp_path / "run")
    assert main(["train", "--config", str(TINY), "--executor", "ray", "--set", f"output_dir={out}", *SMALL,
                 "--set", "mid.epochs=1", "--set", "mid.num_workers=2", "--set", "mid.verify_sync=true"]) == 0
    metrics = read_checkpoint(out / "models" / "mid.pt")["metrics"]
    assert metrics["world_size"] == 2 and metrics["max_param_divergence"] == 0.0
    assert metrics["steps"] == 2  # 128 images, batch 32: each step takes one batch per worker


@pytest.mark.slow
def test_a_killed_generation_actor_is_restarted_and_the_store_is_identical(both, tmp_path, monkeypatch):
    from pipeline.executors import get_executor
    from pipeline.stages import pool

    out = tmp_path / "run"
    (out / "models").mkdir(parents=True)
    for role in ("teacher",):
        (out / "models" / f"{role}.pt").write_bytes((both["ray"] / "models" / f"{role}.pt").read_bytes())
    monkeypatch.setenv("MID_FAULT_KILL_AT_BLOCK", "2")
    monkeypatch.setenv("MID_FAULT_MARKER", str(tmp_path / "killed"))
    cfg = load_config(TINY, [f"output_dir={out}", *[s for s in SMALL if s != "--set"]])
    pool.run(cfg, get_executor("ray"), write_test=False)
    assert (tmp_path / "killed").exists()
    again, first = stores_of(out)["pool_train.zarr"], stores_of(both["local"])["pool_train.zarr"]
    for column in first:
        assert np.array_equal(again[column], first[column]), column
