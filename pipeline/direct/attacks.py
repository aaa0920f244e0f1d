"""Adversarial views of whole in-memory splits (the direct run's pools and fixed test sets)."""
from __future__ import annotations

import torch

from mid_core.attacks import PAPER_COLUMNS, AttackSpec, run_attack
from mid_core.attacks.fused import fused_linf_attacks
from mid_core.evaluation import accuracy
from mid_core.quantize import quantize_adversarial
from pipeline.generation import block_seed, store_eps


def attack_views(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, specs: dict[str, AttackSpec],
                 seed: int, batch_size: int, quantize: bool, num_classes: int,
                 stable_seeds: bool = False, fused: bool = False) -> dict[str, torch.Tensor]:
    """name -> adversarial images of ``images`` ``(N, C, H, W)``: uint8 quantised as the store does (``quantize``)
    or float in [0, 1]. Deterministic given ``seed``: one generator per attack, ``block_seed(seed, 0, index)`` with
    ``index`` the attack's position in ``specs``, or with ``stable_seeds`` its position in the paper's column order
    (so an attack gets the same draws in every pool it is part of; the two agree for PGD_N, PGD_T, MIM_N, MIM_T).
    ``fused``: run each batch's PGD/MIM attacks as one stacked attack (``mid_core.attacks.fused``; same generators,
    same draws, views equal up to float rounding); ``specs`` must then be fusable."""
    generators = {}
    for index, name in enumerate(specs):
        if stable_seeds and name in PAPER_COLUMNS:
            index = PAPER_COLUMNS.index(name)
        generators[name] = torch.Generator().manual_seed(block_seed(seed, 0, index))
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in specs}

    def keep(name: str, adv: torch.Tensor, x: torch.Tensor) -> None:  # quantised at once: uint8 is 1/4 of float
        parts[name].append(quantize_adversarial(adv, x, store_eps(specs[name])) if quantize else adv)

    batches = [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, labels.shape[0], batch_size)]
    if fused:
        for x, y in batches:  # each generator still sees its own attack's batches in order, as below
            views = fused_linf_attacks(list(specs.values()), model, x, y, list(generators.values()), num_classes)
            for name, adv in zip(specs, views):
                keep(name, adv, x)
    else:
        for name, spec in specs.items():
            for x, y in batches:
                adv = run_attack(spec, model, x, y, num_classes=num_classes, generator=generators[name]).adversarial
                keep(name, adv, x)
    return {name: torch.cat(advs) for name, advs in parts.items()}


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def success_rates(model: torch.nn.Module, views: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Fraction of each view the model misclassifies (untargeted success; a targeted view's misses count too)."""
    return {name: 1.0 - accuracy(model, as_float(v), labels, batch_size=10_000) for name, v in views.items()}
