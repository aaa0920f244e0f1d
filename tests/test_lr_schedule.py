"""``mid.lr_decay_epochs``: the MID training function changes the rate it steps with at the configured epoch."""
from __future__ import annotations

import torch

from mid_worker_helpers import run_worker


def _encoders(folder) -> list[dict[str, torch.Tensor]]:
    teacher = torch.load(folder.parent.parent / "models" / "teacher.pt", weights_only=True)["state_dict"]
    start = {k[len("encoder."):]: v for k, v in teacher.items() if k.startswith("encoder.")}
    out = [start]
    for epoch in (1, 2):
        state = torch.load(folder / f"deployed_epoch{epoch}.pt", weights_only=True)["state_dict"]
        out.append({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    return out


def _largest_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())


def test_after_a_decay_to_almost_zero_the_student_stops_moving(tmp_path):
    folder, _ = run_worker(tmp_path, lr_decay_epochs=[1], lr_decay_factor=1e-6)
    w = _encoders(folder)
    assert _largest_change(w[0], w[1]) > 1e-3
    assert _largest_change(w[1], w[2]) < 1e-6 * _largest_change(w[0], w[1]) * 10
    lrs = [torch.load(folder / f"deployed_epoch{e}.pt", weights_only=True)["metrics"]["lr"] for e in (1, 2)]
    assert lrs == [0.003, 0.003 * 1e-6]


def test_without_a_decay_the_second_epoch_moves_as_much(tmp_path):
    w = _encoders(run_worker(tmp_path)[0])
    assert _largest_change(w[1], w[2]) > 0.1 * _largest_change(w[0], w[1])
