"""``mid.online_attacks``: every step's views are generated against the deployed model as it is at that step."""
from __future__ import annotations

import torch

import pipeline.stages.pool as pool_stage
from mid_core.training import param_fingerprint
from mid_worker_helpers import run_worker


def test_each_step_attacks_the_live_model_after_the_previous_update(tmp_path, monkeypatch):
    calls = []
    real = pool_stage.attack_views

    def spy(model, images, labels, specs, seed, block, batch_size, num_classes):
        calls.append((block, param_fingerprint(model).clone(), sorted(specs)))
        return real(model, images, labels, specs, seed, block, batch_size, num_classes)

    monkeypatch.setattr(pool_stage, "attack_views", spy)
    # the blocks hold only clean images and labels: every view a step uses must come from the online attacks
    folder, cfg = run_worker(tmp_path, rows=96, epochs=1, online_attacks=True)
    metrics = torch.load(folder / "deployed_epoch1.pt", weights_only=True)["metrics"]
    steps = int(metrics["steps"])
    assert steps == 96 // 32 == len(calls)
    assert [block for block, _, _ in calls] == list(range(steps))  # one fresh set of views per step
    assert all(names == sorted(cfg.pool.attacks) for _, _, names in calls)
    prints = [fp for _, fp, _ in calls]
    assert all(not torch.equal(a, b) for a, b in zip(prints, prints[1:]))  # the weights moved between any two calls
    assert metrics["attack_seconds"] > 0
