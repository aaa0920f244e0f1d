"""``run_attack``: run an ``AttackSpec`` against a model that maps [0, 1] images to logits, through advertorch
(PGD, MIM, FGSM, BIM, CW-L2, JSMA, DDN, stAdv) or AutoAttack (L-inf, L2, L1), deterministically given a generator."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._advertorch_compat import import_advertorch_attacks
from .spec import AUTOATTACK_NORMS, AttackSpec

# advertorch's JSMA iterates until *every* image of its batch reaches its target (or 392 steps on MNIST), and each
# step computes 10 Jacobians and a (batch, 784, 784) saliency map for the whole batch, finished images included: one
# image that resists makes the whole batch pay its 392 steps. Per image the algorithm is independent of the batch
# (no randomness, per-image search space), so on CPU we run it on chunks of this many images: same adversarial
# images, bit for bit (tests/test_attacks.py), 2.4-2.8x faster on 10 MNIST test images at 1 thread (
# 67 s as one batch, 24-29 s in chunks of 1, 2 or 5). On a GPU a step costs about the same for any batch size, so
# there the whole batch runs at once.
JSMA_CPU_CHUNK = 2

# Warnings advertorch's DDN and stAdv emit on every call on current PyTorch / SciPy about their own code (the
# scheduler-before-optimizer order, grid_sample's align_corners default, L-BFGS-B's deprecated iprint); the
# behaviour they describe is the one these attacks were written for.
_LIBRARY_WARNINGS: tuple[str, ...] = (
    r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`",
    r"Default grid_sample and affine_grid behavior has changed",
    r"scipy.optimize: The `disp` and `iprint` options",
)


def random_targets(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Target labels drawn uniformly from the classes other than each true label: ``(N,)`` int64 on labels' device."""
    if num_classes < 2:
        raise ValueError(f"targeted attacks need at least 2 classes, got num_classes={num_classes}")
    labels = labels.reshape(-1).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    offsets = torch.randint(1, num_classes, (labels.numel(),), generator=generator, device=generator.device)
    return (labels.to(offsets.device) + offsets).remainder_(num_classes).to(labels.device)


@dataclass
class AttackOutput:
    """``adversarial``: float (N, C, H, W) in [0, 1] on the input's device; ``targets``: (N,) or None."""

    adversarial: torch.Tensor
    targets: torch.Tensor | None


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter for the duration; both restored afterwards.

    Attacks only need input gradients; freezing the parameters keeps ``p.grad`` untouched (advertorch calls
    ``loss.backward()``, which would otherwise accumulate into the model's gradients).
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)


def rng_fork_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG ``torch.random.fork_rng`` must save for an attack on ``device`` (none on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (N,) with N={images.shape[0]}, got {tuple(labels.shape)}")
    if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
        raise ValueError("images must lie in [0, 1] (normalisation belongs inside the model)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")


def _build_advertorch(spec: AttackSpec, model: nn.Module, num_classes: int):
    at = import_advertorch_attacks()
    ce = nn.CrossEntropyLoss(reduction="sum")
    common = dict(clip_min=0.0, clip_max=1.0)
    if spec.kind == "pgd":
        return at.LinfPGDAttack(model, loss_fn=ce, eps=spec.eps, nb_iter=spec.steps, eps_iter=spec.step_size,
                                rand_init=spec.rand_init, targeted=spec.targeted, **common)
    if spec.kind == "mim":
        return at.LinfMomentumIterativeAttack(model, loss_fn=ce, eps=spec.eps, nb_iter=spec.steps,
                                              decay_factor=spec.decay, eps_iter=spec.step_size,
                                              targeted=spec.targeted, **common)
    if spec.kind == "fgsm":
        return at.GradientSignAttack(model, loss_fn=ce, eps=spec.eps, targeted=spec.targeted, **common)
    if spec.kind == "bim":
        return at.LinfBasicIterativeAttack(model, loss_fn=ce, eps=spec.eps, nb_iter=spec.steps,
                                           eps_iter=spec.step_size, targeted=spec.targeted, **common)
    if spec.kind == "cw":
        return at.CarliniWagnerL2Attack(model, num_classes, confidence=spec.cw_confidence, targeted=spec.targeted,
                                        learning_rate=spec.cw_learning_rate,
                                        binary_search_steps=spec.cw_binary_search_steps,
                                        max_iterations=spec.cw_max_iterations, initial_const=spec.cw_initial_const,
                                        **common)
    if spec.kind == "jsma":
        return at.JacobianSaliencyMapAttack(model, num_classes, theta=spec.jsma_theta, gamma=spec.jsma_gamma, **common)
    if spec.kind == "ddn":
        return at.DDNL2Attack(model, nb_iter=spec.steps, targeted=spec.targeted, **common)
    if spec.kind == "spatial":
        return at.SpatialTransformAttack(model, num_classes, max_iterations=spec.steps, targeted=spec.targeted,
                                         **common)
    raise AssertionError(spec.kind)  # pragma: no cover


@contextlib.contextmanager
def _quiet_library_warnings() -> Iterator[None]:
    """Silence ``_LIBRARY_WARNINGS`` (and only them) for the duration of an attack."""
    with warnings.catch_warnings():
        for message in _LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def perturbation_size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image size ``(N,)`` of perturbations ``delta`` ``(N, C, H, W)`` in ``norm`` (``linf``, ``l2``, ``l1``)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    raise ValueError(f"perturbation size: norm must be 'linf', 'l2' or 'l1', got {norm!r}")


def _within_budget(spec: AttackSpec, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``adv`` ``(N, C, H, W)`` brought to the spec's threat model, in [0, 1].

    * L-inf: projected onto the eps ball (removes float excess; the attacks already stay inside).
    * L2 / L1 AutoAttack: each perturbation farther than eps is scaled back onto the sphere (float excess only).
    * DDN, a minimum-norm attack, is judged at its budget: an image whose adversarial needs more than eps (L2) gets
      its clean image back, so it counts as robust exactly when the attack failed or needed more than eps.
    * stAdv: advertorch returns an all-zero image where it found no adversarial; that image gets its clean one back.
    """
    if spec.linf_eps is not None:
        adv = torch.minimum(torch.maximum(adv, images - spec.linf_eps), images + spec.linf_eps)
    elif spec.kind == "ddn":
        too_far = perturbation_size(adv - images, "l2") > spec.eps
        adv = torch.where(too_far.view(-1, 1, 1, 1), images, adv)
    elif spec.kind == "autoattack":
        delta = adv - images
        scale = (spec.eps / perturbation_size(delta, spec.norm).clamp_min(1e-12)).clamp(max=1.0)
        adv = images + delta * scale.view(-1, 1, 1, 1)
    elif spec.kind == "spatial":
        failed = (adv.flatten(1) == 0).all(1) & (images.flatten(1) != 0).any(1)
        adv = torch.where(failed.view(-1, 1, 1, 1), images, adv)
    return adv.clamp_(0.0, 1.0)


def _success_and_loss(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor,
                      targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (attack succeeded, attacker's loss to maximise) for keeping the worst PGD restart."""
    with torch.no_grad():
        logits = model(adv)
        if targets is None:
            return logits.argmax(1) != labels, F.cross_entropy(logits, labels, reduction="none")
        return logits.argmax(1) == targets, -F.cross_entropy(logits, targets, reduction="none")


def _run_autoattack(spec: AttackSpec, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    seed: int) -> torch.Tensor:
    # pyautoattack 0.2.0 runs unchanged on torch 2.14 (it ships its own gradient-zeroing helper). Its API differs from
    # fra31/auto-attack: attacks/device/eps/norm/seed/version are keyword-only, there is no `verbose`
    # argument (it logs at DEBUG to the "auto-attack" logger), and the batch size is `batch_size=`, not `bs=`.
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm=AUTOATTACK_NORMS[spec.norm], eps=float(spec.eps),
                           version=spec.autoattack_version,
                           attacks=list(spec.autoattack_attacks) if spec.autoattack_attacks else None,
                           device=images.device, seed=seed)
    adversary.verbose = False
    if spec.norm == "l1" and spec.autoattack_version == "custom":
        # The L1 settings of AutoAttack's standard version (AutoAttack._set_version), which a custom run skips: APGD
        # on L1 needs the large-eps schedule (Croce & Hein 2021) to be reliable.
        adversary.apgd.use_largereps = True
        adversary.apgd_targeted.use_largereps = True
        adversary.apgd.n_restarts = 5
        adversary.apgd_targeted.n_target_classes = 5
    x_adv, _ = adversary.run_standard_evaluation(images, labels, batch_size=max(1, images.shape[0]))
    return x_adv


def run_attack(spec: AttackSpec, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
               num_classes: int = 10, generator: torch.Generator | None = None, seed: int = 0,
               targets: torch.Tensor | None = None) -> AttackOutput:
    """Run ``spec`` against ``model`` (logits from [0, 1] images) on ``images``' device.

    Deterministic given ``generator`` (or, without one, ``seed``): targeted specs draw their targets with
    ``random_targets`` from it (unless ``targets`` is given), and torch's global RNG, which advertorch's random
    start and AutoAttack use, is seeded from it inside ``torch.random.fork_rng`` so the caller's RNG state is
    unchanged. The model is in eval mode with frozen parameters during the attack (both restored after), so no
    gradient reaches ``p.grad``. Outputs are brought to the spec's budget and [0, 1] (``_within_budget``: L-inf
    ones projected once more onto the eps ball, DDN judged at its L2 budget).
    """
    _check_inputs(images, labels, num_classes)
    device = images.device
    labels = labels.to(device).long()
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if spec.targeted:
        if targets is None:
            targets = random_targets(labels, num_classes, generator)
        targets = targets.to(device).long()
        if targets.shape != labels.shape or bool((targets == labels).any()):
            raise ValueError("targets must be (N,) and differ from the true labels")
    else:
        targets = None
    rng_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    if images.shape[0] == 0:
        return AttackOutput(images.clone(), targets)

    fork_devices = rng_fork_devices(device)
    with frozen_eval(model), torch.enable_grad(), torch.random.fork_rng(devices=fork_devices), \
            _quiet_library_warnings():
        torch.manual_seed(rng_seed)
        x = images.detach()
        if spec.kind == "autoattack":
            adv = _run_autoattack(spec, model, x, labels, rng_seed)
        else:
            attack = _build_advertorch(spec, model, num_classes)
            y = targets if spec.targeted else labels
            chunk = JSMA_CPU_CHUNK if spec.kind == "jsma" and device.type == "cpu" else x.shape[0]
            adv = torch.cat([attack.perturb(x[i:i + chunk].clone(), y[i:i + chunk].clone()).detach()
                             for i in range(0, x.shape[0], chunk)])
            for _ in range(spec.restarts - 1):  # PGD restarts: keep the worst case per sample
                cand = attack.perturb(x.clone(), y.clone()).detach()
                ok_a, loss_a = _success_and_loss(model, adv, labels, targets)
                ok_c, loss_c = _success_and_loss(model, cand, labels, targets)
                better = (ok_c & ~ok_a) | ((ok_c == ok_a) & (loss_c > loss_a))
                adv = torch.where(better.view(-1, 1, 1, 1), cand, adv)
    adv = adv.detach().to(device=device, dtype=images.dtype)
    return AttackOutput(_within_budget(spec, adv, images), targets)
