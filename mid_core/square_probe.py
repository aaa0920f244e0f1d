"""How much of an AutoAttack robust accuracy is gradient masking: the black-box Square attack, pushed harder.

Standard AutoAttack (L-inf) runs three gradient attacks (APGD-CE, APGD-T, FAB-T) and then Square, a black-box
attack that needs no gradients, with 5,000 queries and one restart. When Square still breaks points that all three
gradient attacks missed, the model's gradients mislead the attacker on those points (AutoAttack's own check,
``checks.check_square_sr``, flags it), and the reported figure is only an upper bound: a longer Square may break
more. This probe measures that, per image, in stages on the same images:

1. ``clean``: correctly classified;
2. ``gradient``: still correct after APGD-CE, APGD-T and FAB-T with AutoAttack's standard settings;
3. ``autoattack``: and after Square as standard AutoAttack runs it (5,000 queries, p_init 0.8, one restart), i.e.
   standard AutoAttack;
4. ``strong_square``: and after Square with ``queries`` queries and ``restarts`` restarts from other seeds.

Each stage attacks only the points that survived the previous one, so the accuracies never increase and the
last one is the tightest upper bound on robust accuracy the probe found. ``strong_gap`` (stage 3 minus stage 4,
in accuracy points) is the masking signal: 0 means a longer black-box search found nothing AutoAttack had
missed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .attacks import frozen_eval
from .evaluation import predict

STAGES = ("clean", "gradient", "autoattack", "strong_square")
GRADIENT_ATTACKS = ("apgd-ce", "apgd-t", "fab-t")  # standard AutoAttack before its Square
STANDARD_SQUARE_QUERIES = 5000


@dataclass
class SquareProbeResult:
    """Robust accuracy (percent of all images) after each stage, the wall time of each stage and the setup."""

    images: int
    eps: float
    queries: int
    restarts: int
    seed: int
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def strong_gap(self) -> float:
        """Accuracy points the strong Square took off standard AutoAttack's figure (>= 0)."""
        return self.accuracy["autoattack"] - self.accuracy["strong_square"]

    def to_dict(self) -> dict:
        return {**asdict(self), "strong_gap": self.strong_gap}


def square_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, queries: int,
                  restarts: int = 1, seed: int = 0) -> torch.Tensor:
    """pyautoattack's Square (L-inf, margin loss, p_init 0.8, AutoAttack's fixed schedule) on ``images``
    ``(N, C, H, W)`` in [0, 1] with true ``labels`` ``(N,)``; returns adversarial images of the same shape, inside the
    eps ball and [0, 1]. The model runs in eval mode with frozen parameters (restored after). Each restart attacks
    only the points still unbroken."""
    from pyautoattack.square import SquareAttack

    attack = SquareAttack(model, norm="Linf", n_queries=queries, eps=eps, p_init=0.8, n_restarts=restarts,
                          seed=seed, verbose=False, device=images.device, resc_schedule=False)
    with frozen_eval(model), torch.no_grad():
        adv = attack.perturb(images, labels)
    return torch.minimum(torch.maximum(adv, images - eps), images + eps).clamp(0.0, 1.0)


def square_survivors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, robust: torch.Tensor, eps: float,
                     queries: int, restarts: int = 1, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """``robust`` (bool ``(N,)``) after ``square_attack`` on the images still robust: a new mask, each image robust
    only if it was and Square did not break it. Images already broken are not attacked again."""
    robust = robust.clone()
    idx = robust.nonzero().squeeze(1)
    if idx.numel():
        adv = square_attack(model, images[idx], labels[idx], eps, queries, restarts, seed)
        robust[idx] = predict(model, adv, batch_size) == labels[idx]
    return robust


def _gradient_attacks(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, seed: int,
                      batch_size: int) -> torch.Tensor:
    """Standard AutoAttack without its Square: the same attack objects and settings, Square dropped."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=images.device, seed=seed)
    adversary.verbose = False
    adversary.attacks_to_run = list(GRADIENT_ATTACKS)
    x_adv, _ = adversary.run_standard_evaluation(images, labels, batch_size=batch_size)
    return x_adv


def square_probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float = 0.3,
                 queries: int = 20_000, restarts: int = 1, seed: int = 0, batch_size: int = 1000,
                 log: Callable[[str], None] | None = None) -> SquareProbeResult:
    """Run the four stages of the module docstring on ``images`` and return their robust accuracies.

    Args:
        model: maps float images ``(N, C, H, W)`` in [0, 1] to logits ``(N, classes)``; put in eval mode with
            frozen parameters for the probe (restored after).
        images: ``(N, C, H, W)`` float in [0, 1]; labels: ``(N,)`` int64.
        eps: L-inf radius.
        queries, restarts: the strong Square's budget; ``queries`` must exceed the standard 5,000 for the stage
            to be stronger than AutoAttack's own.
        seed: seeds the gradient attacks and the standard Square; the strong Square's restarts use ``seed + 1``.
        batch_size: images per batch of the gradient attacks (Square runs on all remaining points at once).
        log: called with one line per finished stage (progress of a run that takes minutes to hours).
    """
    if images.dim() != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"images must be (N, C, H, W) and labels (N,); got {tuple(images.shape)} and {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to attack")
    if not images.is_floating_point() or float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError("images must be float in [0, 1] (convert uint8 images with mid_core.quantize.from_uint8)")
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    if queries <= STANDARD_SQUARE_QUERIES:
        raise ValueError(f"queries={queries} is not stronger than standard AutoAttack's Square "
                         f"({STANDARD_SQUARE_QUERIES}); use more, e.g. 20000")
    if restarts < 1 or batch_size < 1:
        raise ValueError(f"restarts and batch_size must be >= 1, got {restarts} and {batch_size}")
    labels = labels.to(images.device).long()
    result = SquareProbeResult(images=int(images.shape[0]), eps=float(eps), queries=int(queries),
                               restarts=int(restarts), seed=int(seed))
    n = images.shape[0]

    def record(stage: str, alive: torch.Tensor, started: float) -> None:
        result.accuracy[stage] = 100.0 * float(alive.sum()) / n
        result.seconds[stage] = time.perf_counter() - started
        if log is not None:
            log(f"[square_probe] {stage:>13}: {result.accuracy[stage]:6.2f}% robust "
                f"({int(alive.sum())}/{n}) in {result.seconds[stage]:.0f} s")

    with frozen_eval(model), torch.enable_grad():
        t = time.perf_counter()
        alive = predict(model, images, batch_size) == labels
        record("clean", alive, t)

        t = time.perf_counter()
        adv = _gradient_attacks(model, images, labels, eps, seed, batch_size)
        alive &= predict(model, adv, batch_size) == labels
        record("gradient", alive, t)

        for stage, stage_queries, stage_restarts, stage_seed in (
                ("autoattack", STANDARD_SQUARE_QUERIES, 1, seed),
                ("strong_square", queries, restarts, seed + 1)):
            t = time.perf_counter()
            alive = square_survivors(model, images, labels, alive, eps, stage_queries, stage_restarts, stage_seed,
                                     batch_size)
            record(stage, alive, t)
    return result
