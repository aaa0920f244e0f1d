"""``mid.lr_decay_epochs``: the MID trainer changes the rate it steps with at the configured epoch."""
from __future__ import annotations

import pytest
import torch

from mid_core.datasets import load_dataset
from mid_core.meta_step import BENIGN
from mid_core.models import Teacher
from pipeline.config import config_from_dict
from pipeline.direct.training import train_mid_variant

TINY = {"data": {"dataset": "digits"}, "model": {"backbone": "lenet_tiny"},
        "pool": {"attacks": ["PGD_N", "MIM_T"], "steps": 3, "step_size": 0.1},
        "mid": {"epochs": 2, "batch_size": 32, "lr": 0.003}, "evaluation": {"limit": 32}}


def _student_after_each_epoch(**mid: object) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """Train 2 tiny epochs on a pool whose attack views are the clean images (the rate, not the views, is under
    test); return the student's weights after each epoch and the run's info."""
    cfg = config_from_dict({**TINY, "mid": {**TINY["mid"], **mid}})
    train, test = load_dataset("digits", "train").subset(96), load_dataset("digits", "test").subset(32)
    clean = torch.round(train.images * 255).to(torch.uint8)
    pool = {BENIGN: clean, "PGD_N": clean, "MIM_T": clean}
    torch.manual_seed(0)
    teacher = Teacher.from_backbone("lenet_tiny").freeze()
    weights = [{k: v.clone() for k, v in teacher.encoder.state_dict().items()}]  # the student starts as E_t

    def keep(deployed, info):
        weights.append({k: v.clone() for k, v in deployed.encoder.state_dict().items()})

    _, info = train_mid_variant(cfg, teacher, pool, train.labels, test, 1e9, torch.device("cpu"),
                                lambda deployed, epoch: {}, on_epoch=keep)
    return weights, info


def _largest_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())


def test_after_a_decay_to_almost_zero_the_student_stops_moving():
    weights, info = _student_after_each_epoch(lr_decay_epochs=[1], lr_decay_factor=1e-9)
    assert [h["lr"] for h in info["history"]] == pytest.approx([0.003, 0.003e-9])
    assert _largest_change(weights[0], weights[1]) > 1e-4  # epoch 1 at the full rate
    assert _largest_change(weights[1], weights[2]) < 1e-9  # epoch 2: Adam steps of ~lr each, 3 steps


def test_without_a_decay_the_second_epoch_moves_as_much():
    weights, info = _student_after_each_epoch()
    assert [h["lr"] for h in info["history"]] == pytest.approx([0.003, 0.003])
    assert _largest_change(weights[1], weights[2]) > 1e-4
