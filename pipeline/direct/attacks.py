"""Adversarial views of whole in-memory splits (the direct run's pools and fixed test sets)."""
from __future__ import annotations

import torch

from mid_core.attacks import PAPER_COLUMNS, AttackSpec, run_attack
from mid_core.evaluation import accuracy
from mid_core.quantize import quantize_adversarial
from pipeline.generation import block_seed, store_eps


def attack_views(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, specs: dict[str, AttackSpec],
                 seed: int, batch_size: int, quantize: bool, num_classes: int,
                 stable_seeds: bool = False) -> dict[str, torch.Tensor]:
    """name -> adversarial images of ``images`` ``(N, C, H, W)``: uint8 quantised as the store does (``quantize``)
    or float in [0, 1]. Deterministic given ``seed``: one generator per attack, ``block_seed(seed, 0, index)`` with
    ``index`` the attack's position in ``specs``, or with ``stable_seeds`` its position in the paper's column order
    (so an attack gets the same draws in every pool it is part of; the two agree for PGD_N, PGD_T, MIM_N, MIM_T)."""
    out = {}
    for index, (name, spec) in enumerate(specs.items()):
        if stable_seeds and name in PAPER_COLUMNS:
            index = PAPER_COLUMNS.index(name)
        generator = torch.Generator().manual_seed(block_seed(seed, 0, index))
        parts = []
        for i in range(0, labels.shape[0], batch_size):
            x, y = images[i:i + batch_size], labels[i:i + batch_size]
            adv = run_attack(spec, model, x, y, num_classes=num_classes, generator=generator).adversarial
            if quantize:
                adv = quantize_adversarial(adv, x, store_eps(spec))
            parts.append(adv)
        out[name] = torch.cat(parts)
    return out


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def success_rates(model: torch.nn.Module, views: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Fraction of each view the model misclassifies (untargeted success; a targeted view's misses count too)."""
    return {name: 1.0 - accuracy(model, as_float(v), labels, batch_size=10_000) for name, v in views.items()}
