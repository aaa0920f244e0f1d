"""Attack views made during training: ``mid.attack_refresh_steps`` (snapshots refreshed every K steps, one window
ahead) and how several workers split the images the views are made of (``mid.online_attacks`` and the former)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.stages.pool as pool_stage
from mid_core.checkpoint import load_teacher
from mid_core.models import DeployedModel, student_from_teacher
from mid_core.training import param_fingerprint
from mid_worker_helpers import run_worker, worker_loop
from pipeline.config import ConfigError, config_from_dict
from pipeline.errors import UserError
from pipeline.executors.local import LocalContext
from pipeline.stages.mid import check_same_training, dataset_shard

TESTS = Path(__file__).resolve().parent
REAL_ATTACK_VIEWS = pool_stage.attack_views


def spy_attack_views(monkeypatch) -> list[dict]:
    """Record every ``attack_views`` call of training: the seed block, the attacked model's fingerprint, the clean
    images (uint8 rows as bytes), and the inputs and outputs."""
    calls: list[dict] = []

    def spy(model, images, labels, specs, seed, block, batch_size, num_classes):
        views, targets = REAL_ATTACK_VIEWS(model, images, labels, specs, seed, block, batch_size, num_classes)
        calls.append({"block": block, "model": param_fingerprint(model).clone(), "images": images.clone(),
                      "labels": labels.clone(), "specs": specs, "seed": seed, "views": views,
                      "rows": {bytes(r) for r in (images * 255).round().to(torch.uint8).numpy()}})
        return views, targets

    monkeypatch.setattr(pool_stage, "attack_views", spy)
    return calls


def epoch_metrics(folder: Path, epoch: int) -> dict:
    return torch.load(folder / f"deployed_epoch{epoch}.pt", weights_only=True)["metrics"]


def test_one_window_for_the_whole_run_attacks_only_the_initial_model(tmp_path, monkeypatch):
    calls = spy_attack_views(monkeypatch)
    folder, cfg = run_worker(tmp_path, rows=96, epochs=1, attack_refresh_steps=100)
    teacher = load_teacher(tmp_path / "models" / "teacher.pt")
    initial = DeployedModel(student_from_teacher(teacher, cfg.mid.student_init), teacher.classifier)
    assert [c["block"] for c in calls] == [0, 1, 2]  # one set of views per step, seeded by the step
    for call in calls:
        assert torch.equal(call["model"], param_fingerprint(initial))
        again, _ = REAL_ATTACK_VIEWS(initial, call["images"], call["labels"], call["specs"], call["seed"],
                                           call["block"], call["labels"].shape[0], 10)
        # the same views, up to the odd pixel whose near-zero gradient sign flips with the float summation order
        assert all((again[n] != call["views"][n]).float().mean() < 1e-3 for n in again)
    metrics = epoch_metrics(folder, 1)
    assert metrics["steps"] == 3 and metrics["attack_staleness_steps"] == 1.0  # ages 0, 1, 2 in window 0
    assert metrics["attack_seconds"] > 0


def test_windows_of_two_steps_attack_the_snapshot_of_the_window_before(tmp_path, monkeypatch):
    """5 steps per epoch, K = 2: windows [0, 1], [2, 3], [4] per epoch. Windows 0 and 1 are attacked against the
    model at the epoch's start, window 2 against the model at the start of window 1 (after 2 updates); ages
    0, 1 | 2, 3 | 2, mean 1.6, in every epoch (the schedule restarts each epoch)."""
    calls = spy_attack_views(monkeypatch)
    folder, _ = run_worker(tmp_path, rows=160, epochs=2, attack_refresh_steps=2)
    assert sorted(c["block"] for c in calls) == list(range(10))
    by_step = {c["block"]: c["model"] for c in calls}
    groups = [[0, 1, 2, 3], [4], [5, 6, 7, 8], [9]]
    for group in groups:
        assert all(torch.equal(by_step[s], by_step[group[0]]) for s in group)
    firsts = [by_step[g[0]] for g in groups]
    assert all(not torch.equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])
    assert [epoch_metrics(folder, e)["attack_staleness_steps"] for e in (1, 2)] == [1.6, 1.6]


def test_one_step_windows_attack_the_model_one_step_old(tmp_path, monkeypatch):
    calls = spy_attack_views(monkeypatch)
    folder, _ = run_worker(tmp_path, rows=128, epochs=1, attack_refresh_steps=1)
    by_step = {c["block"]: c["model"] for c in calls}
    assert torch.equal(by_step[0], by_step[1])  # window 0 and 1: the model at the epoch's start
    assert all(not torch.equal(by_step[s], by_step[s + 1]) for s in (1, 2))
    assert epoch_metrics(folder, 1)["attack_staleness_steps"] == 0.75  # ages 0, 1, 1, 1


def _train_in_subprocess(out: Path, env: dict[str, str]) -> int:
    """Two epochs of 3 steps with K = 2 in a fresh process (so a hard kill ends only that process)."""
    script = ("import sys; from pathlib import Path; from mid_worker_helpers import run_worker; "
              "run_worker(Path(sys.argv[1]), rows=96, epochs=2, attack_refresh_steps=2)")
    env = {**env, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    return subprocess.run([sys.executable, "-c", script, str(out)], env=env, cwd=TESTS.parent,
                          capture_output=True).returncode


def test_a_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    marker = tmp_path / "killed"
    fault = {**os.environ, "MID_FAULT_KILL_AT_STEP": "5", "MID_FAULT_MARKER": str(marker)}  # epoch 2, window 1 next
    assert _train_in_subprocess(tmp_path / "a", fault) != 0 and marker.exists()
    assert _train_in_subprocess(tmp_path / "a", fault) == 0
    assert _train_in_subprocess(tmp_path / "b", dict(os.environ)) == 0
    states = [torch.load(tmp_path / r / "training" / "mid" / "state_epoch2.pt", weights_only=True) for r in "ab"]
    assert states[0]["step"] == states[1]["step"] == 6
    for key, value in states[1]["student"].items():
        assert torch.equal(states[0]["student"][key], value), key


class RankContext(LocalContext):
    """Rank ``rank`` of ``world_size`` on the CPU, gradients not averaged (each rank runs alone here): enough to
    see which images each rank attacks."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__(torch.device("cpu"), None, None)
        self.rank, self.world_size = rank, world_size


def test_two_workers_attack_disjoint_halves_of_the_images_one_worker_attacks(tmp_path, monkeypatch):
    calls = spy_attack_views(monkeypatch)
    folder, _ = run_worker(tmp_path / "one", rows=128, epochs=1, online_attacks=True)
    one = set().union(*(c["rows"] for c in calls))
    assert epoch_metrics(folder, 1)["steps"] == 4
    halves = []
    for rank in (0, 1):
        calls.clear()
        run_worker(tmp_path / f"rank{rank}", rows=128, epochs=1, online_attacks=True, context=RankContext(rank, 2))
        # 2 of the 4 blocks of 32 rows each, one batch per step; the draws of each (step, rank) their own
        assert [c["block"] for c in calls] == [2 * step + rank for step in range(2)]
        halves.append(set().union(*(c["rows"] for c in calls)))
    assert not halves[0] & halves[1] and halves[0] | halves[1] == one and len(one) > 100


def test_unequal_shares_take_the_steps_of_the_smallest():
    assert dataset_shard(96, 32, [2, 0, 1], 0, 2, 32) == ([2, 1], 1)
    assert dataset_shard(96, 32, [2, 0, 1], 1, 2, 32) == ([0], 1)
    assert dataset_shard(100, 32, [3, 0, 1, 2], 0, 2, 16) == ([3, 1], 2)  # block 3 holds the last 4 rows
    assert dataset_shard(100, 32, [3, 0, 1, 2], 0, 1, 16) == ([3, 0, 1, 2], 6)


@pytest.mark.parametrize("mid, pool, match", [
    ({"attack_refresh_steps": 2, "online_attacks": True}, {}, "keep one"),
    ({"attack_refresh_steps": 2}, {"refresh_every": 1}, "pool.refresh_every: 0"),
    ({"attack_refresh_steps": 2, "variant": "mid_more", "continue_from": "mid"}, {}, "mid.continue_from: null"),
    ({"attack_refresh_steps": -1}, {}, "attack_refresh_steps"),
])
def test_conflicting_or_negative_settings_are_refused_with_the_fix(mid, pool, match):
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict({"mid": mid, "pool": pool})
    assert "\n" not in str(info.value)


def test_a_state_made_with_another_refresh_interval_is_not_resumed(tmp_path):
    _, cfg = worker_loop(tmp_path, attack_refresh_steps=2)
    other = config_from_dict({**cfg.to_dict(), "mid": {**cfg.to_dict()["mid"], "attack_refresh_steps": 3}})
    with pytest.raises(UserError, match="mid.attack_refresh_steps = 3"):
        check_same_training(cfg, other.to_dict(), 1, "the state", "Use the same settings.")
    plain = config_from_dict({**cfg.to_dict(), "mid": {**cfg.to_dict()["mid"], "attack_refresh_steps": 0}})
    older = plain.to_dict()
    del older["mid"]["attack_refresh_steps"]  # a state saved before the option existed: its default, 0
    check_same_training(plain, older, 1, "the state", "Use the same settings.")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("refresh", [0, 2])
def test_two_ray_workers_split_the_generated_views_and_stay_in_step(ray_cluster, tmp_path, refresh):
    from pipeline.executors.base import WorkerResources
    from pipeline.executors.ray_executor import RayExecutor

    mid = {"attack_refresh_steps": refresh} if refresh else {"online_attacks": True}
    loop, _ = worker_loop(tmp_path, rows=128, epochs=1, num_workers=2, verify_sync=True, **mid)
    RayExecutor().train("pipeline.stages.mid:train_worker", {**loop, "ray_results": str(tmp_path / "ray")},
                        WorkerResources(2, 0.5, False, 1), name="attack-refresh")
    metrics = epoch_metrics(Path(loop["state_dir"]), 1)
    assert metrics["world_size"] == 2 and metrics["max_param_divergence"] == 0.0
    assert metrics["steps"] == 2  # 128 images in 4 blocks, batch 32: each step takes one batch per worker
    assert np.isfinite(metrics["loss_total"])
