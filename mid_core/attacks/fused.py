"""Several L-inf PGD / MIM attacks of one batch run as one batched attack (one forward/backward pass per step).

Why: ``mid.online_attacks`` generates a batch's four views (PGD_N, PGD_T, MIM_N, MIM_T, 40 steps each) against the
current model before every MID step. Run one after the other, that is 160 forward/backward passes on 128 images; on
a GPU each pass is launch-bound (microseconds of arithmetic for a LeNet), so the step costs ~15x a MID step
(docs/benchmarks.md, "GPU figures"). Stacked into one batch of 4 x 128 images the same views take 40 passes.

Same attacks, same draws: for each spec this computes what ``run_attack(spec, model, images, labels,
generator=g)`` computes with advertorch, in the same order of draws from ``g`` (targets, then the seed of the
random start), so the views equal the one-by-one ones up to floating-point differences of a larger batch
(tests/test_fused_attacks.py). One update rule covers both kinds, per sample:

    g <- decay * g + grad / max(||grad||_1, 1e-6)     (PGD: decay 0, so sign(g) = sign(grad), as advertorch's PGD)
    delta <- clip_[0,1](x + clip_eps(delta + step_size * sign(g))) - x

with ``grad`` the gradient of the summed cross-entropy (negated for targeted specs), exactly as advertorch's
``LinfPGDAttack`` and ``LinfMomentumIterativeAttack`` (whose per-sample L1 normalisation is ``normalize_by_pnorm``).
The summed loss keeps every sample's gradient independent of the others in the stacked batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import AttackSpec, frozen_eval, random_targets, rng_fork_devices

FUSABLE_KINDS: tuple[str, ...] = ("pgd", "mim")
_L1_FLOOR = 1e-6  # advertorch's normalize_by_pnorm small_constant


def can_fuse(specs: Sequence[AttackSpec]) -> bool:
    """True when ``fused_linf_attacks`` can run ``specs`` together: L-inf PGD/MIM, one restart, equal step counts."""
    return (len(specs) > 0 and all(s.kind in FUSABLE_KINDS and s.restarts == 1 for s in specs)
            and len({s.steps for s in specs}) == 1)


def _per_sample(values: Sequence[float], n: int, like: torch.Tensor) -> torch.Tensor:
    """``(len(values) * n, 1, 1, 1)``: each spec's value repeated for its ``n`` samples."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).repeat_interleave(n).view(-1, 1, 1, 1)


def fused_linf_attacks(specs: Sequence[AttackSpec], model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       generators: Sequence[torch.Generator], num_classes: int = 10) -> list[torch.Tensor]:
    """One adversarial batch per spec, each ``(N, C, H, W)`` in [0, 1] and within the spec's eps of ``images``.

    ``images`` ``(N, C, H, W)`` in [0, 1], ``labels`` ``(N,)``; ``generators[i]`` plays the role of ``run_attack``'s
    ``generator`` for ``specs[i]`` and is advanced the same way. The model is in eval mode with frozen parameters
    during the attack (both restored after) and the caller's global RNG state is unchanged.
    """
    if not can_fuse(specs):
        raise ValueError("fused_linf_attacks takes L-inf PGD/MIM specs with one restart and equal step counts, got "
                         f"{[(s.name, s.kind, s.steps, s.restarts) for s in specs]}; run the others with run_attack")
    if len(generators) != len(specs):
        raise ValueError(f"one generator per spec: got {len(generators)} for {len(specs)} specs")
    device, n = images.device, images.shape[0]
    labels = labels.to(device).long()
    x = images.detach()
    fork_devices = rng_fork_devices(device)
    goals, starts = [], []
    for spec, generator in zip(specs, generators):  # the draws of run_attack, in its order
        goals.append(random_targets(labels, num_classes, generator).to(device) if spec.targeted else labels)
        rng_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        if spec.rand_init:  # advertorch's rand_init_delta under the seed run_attack sets
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(rng_seed)
                delta0 = torch.zeros_like(x).uniform_(-1, 1) * spec.eps
            starts.append((x + delta0).clamp(0.0, 1.0) - x)
        else:
            starts.append(torch.zeros_like(x))
    xs = x.repeat(len(specs), 1, 1, 1)
    ys = torch.cat(goals)
    sign = _per_sample([-1.0 if s.targeted else 1.0 for s in specs], n, x).view(-1)
    eps = _per_sample([s.eps for s in specs], n, x)
    step = _per_sample([s.step_size for s in specs], n, x)
    decay = _per_sample([s.decay if s.kind == "mim" else 0.0 for s in specs], n, x)
    delta = torch.cat(starts)
    momentum = torch.zeros_like(delta)
    with frozen_eval(model), torch.enable_grad():
        for _ in range(specs[0].steps):
            delta.requires_grad_(True)
            loss = (sign * F.cross_entropy(model(xs + delta), ys, reduction="none")).sum()
            grad, = torch.autograd.grad(loss, delta)
            l1 = grad.abs().flatten(1).sum(1).clamp_min(_L1_FLOOR).view(-1, 1, 1, 1)
            momentum = decay * momentum + grad * (1.0 / l1)  # advertorch multiplies by the reciprocal
            with torch.no_grad():
                delta = delta.detach() + step * momentum.sign()
                delta = torch.maximum(torch.minimum(delta, eps), -eps)
                delta = (xs + delta).clamp(0.0, 1.0) - xs
    adv = (xs + delta.detach()).clamp(0.0, 1.0)
    adv = torch.minimum(torch.maximum(adv, xs - eps), xs + eps).to(images.dtype)  # run_attack's final projection
    return list(adv.split(n))
