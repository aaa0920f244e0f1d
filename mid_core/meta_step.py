"""One MID meta-train / meta-test step, computed functionally (DESIGN.md, "The algorithm, exactly").

Per step, with pool domains D (benign included) and a held-out domain a* drawn uniformly from D:

    L_train(θ) = Σ_{a ≠ a*} L(θ, a)
    θ'         = θ − α ∇θ L_train(θ)            (create_graph=True unless first_order)
    L_test     = L(θ', a*)                        (with the meta-test weights)
    update θ with  ∇θ [ L_train(θ) + β · L_test(θ') ]

The student is evaluated with ``torch.func.functional_call`` on an explicit parameter dict, so the fast
weights θ' stay in the autograd graph and the meta-test loss reaches the student (the official release
loads fast weights with ``load_state_dict``, which cuts that graph).

BatchNorm policy: every ``functional_call`` gets *cloned* buffers, so running statistics of the module are
never modified in place inside the graph; after the step the buffers updated by the meta-train pass are
copied back (one running-statistics update per step, as a normal training step would do).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mid_core.losses import (
    LossWeights,
    adversarial_consistency,
    cyclic_consistency,
    feature_log_probs,
    label_consistency,
)
from mid_core.models import Teacher

BENIGN = "benign"


@dataclass(frozen=True)
class MetaConfig:
    """Hyper-parameters of the meta step. Defaults follow the official MID code.

    ``use_meta=False`` is the Table 8 "no meta" ablation: one plain step on the sum over all domains.
    ``distill=False`` is the Table 8 "no DST" ablation: the student is a whole classifier (images -> logits, e.g.
    ``StandardClassifier``) trained with cross-entropy on every view (weight ``lc``); there are no teacher
    features, so ``ac`` and ``cc`` must be 0. ``use_meta=False, distill=False`` is ERM on the pool.
    """

    inner_lr: float = 1e-3  # α
    meta_test_weight: float = 1.0  # β
    first_order: bool = False
    use_meta: bool = True
    distill: bool = True
    temperature: float = 1.0
    kl_reduction: str = "batchmean"  # or "elementmean" (the official code's nn.KLDivLoss() default); see losses.py
    train_weights: LossWeights = field(default_factory=LossWeights)
    test_weights: LossWeights = field(default_factory=lambda: LossWeights(1.0, 1.0, 1.0))


@dataclass
class StepResult:
    """Gradients for every student parameter (same order as ``named_parameters``) and scalar metrics."""

    grads: dict[str, torch.Tensor]
    metrics: dict[str, float]
    held_out: str | None


def draw_held_out(domains: list[str], seed: int, step: int) -> str:
    """The held-out domain a* for ``step``: uniform over ``domains``, identical on every worker."""
    return random.Random(seed * 1_000_003 + step).choice(sorted(domains))


def _domain_losses(
    student: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    teacher: Teacher,
    teacher_log_p: torch.Tensor,
    views: list[torch.Tensor],
    labels: torch.Tensor,
    weights: LossWeights,
    temperature: float,
    distill: bool = True,
    kl_reduction: str = "batchmean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_a L(θ, a) over the given views, all in one forward pass.

    ``views``: k tensors ``(N, C, H, W)``; ``teacher_log_p``: ``(N, ...)`` detached clean teacher
    log-probabilities. Returns the summed loss and the per-term sums (AC, CC, LC) for logging.
    Without distillation the student outputs logits and the loss is their cross-entropy (LC only).
    """
    k = len(views)
    batch = torch.cat(views, dim=0)
    z = functional_call(student, {**params, **buffers}, (batch,))
    y = labels.repeat(k)
    zero = z.new_zeros(())
    if not distill:
        lc = F.cross_entropy(z, y, reduction="sum") / labels.shape[0]
        return weights.lc * lc, {"ac": zero, "cc": zero, "lc": lc.detach()}
    target = teacher_log_p.repeat(k, *([1] * (teacher_log_p.dim() - 1)))
    ac = adversarial_consistency(target, z, temperature, kl_reduction).sum() / labels.shape[0] if weights.ac else zero
    cc = (
        cyclic_consistency(target, z, teacher.encoder, teacher.decoder, temperature, kl_reduction).sum() / labels.shape[0]
        if weights.cc
        else zero
    )
    lc = label_consistency(z, teacher.classifier, y).sum() / labels.shape[0] if weights.lc else zero
    total = weights.ac * ac + weights.cc * cc + weights.lc * lc
    return total, {"ac": ac.detach(), "cc": cc.detach(), "lc": lc.detach()}


def meta_step(
    student: nn.Module,
    teacher: Teacher,
    views: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    held_out: str | None,
    config: MetaConfig,
) -> StepResult:
    """Compute MID's update gradients for one batch; does not touch ``.grad`` or the optimizer.

    Args:
        student: the student encoder E_s (trainable); with ``config.distill=False`` a whole classifier.
        teacher: the frozen teacher (E_t, C_t, D_t); call ``teacher.freeze()`` first.
        views: domain name -> images ``(N, C, H, W)`` in [0, 1], index-aligned; must contain ``"benign"``
            (the clean images, used for the teacher's target features).
        labels: ``(N,)`` int64 true labels.
        held_out: the meta-test domain a* (a key of ``views``); ignored when ``config.use_meta`` is False.
        config: step hyper-parameters.

    Returns:
        ``StepResult`` whose ``grads`` are ∇θ [L_train(θ) + β L_test(θ')] (or ∇θ Σ_a L(θ, a) without meta).
    """
    if BENIGN not in views:
        raise ValueError(f"views must include the clean images under {BENIGN!r}; got {sorted(views)}")
    if any(p.requires_grad for p in teacher.parameters()):
        raise ValueError("the teacher must be frozen (call teacher.freeze()) before the meta step")
    used = [config.train_weights] + ([config.test_weights] if config.use_meta else [])
    if not config.distill and any(w.ac or w.cc for w in used):
        raise ValueError("without distillation there are no teacher features: set the ac and cc weights to 0")
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    module_buffers = dict(student.named_buffers())

    with torch.no_grad():
        teacher_log_p = feature_log_probs(teacher.encoder(views[BENIGN]), config.temperature)

    def buffers_copy() -> dict[str, torch.Tensor]:
        return {n: b.clone() for n, b in module_buffers.items()}

    if not config.use_meta:
        train_domains = sorted(views)
        held_out = None
    else:
        if held_out not in views:
            raise ValueError(f"held-out domain {held_out!r} is not among the views {sorted(views)}")
        train_domains = sorted(d for d in views if d != held_out)
        if not train_domains:
            raise ValueError("meta-learning needs at least two domains: one known, one held out")

    with _double_backward_attention(not config.first_order and config.use_meta):
        return _step(student, teacher, views, labels, held_out, config, names, params, module_buffers, teacher_log_p,
                     buffers_copy, train_domains)


def _double_backward_attention(needed: bool):
    """The math kernel of scaled-dot-product attention while ``needed``: the fused kernels (flash, memory-efficient)
    have no double backward, which the second-order step takes through a ViT. A no-op for attention-free models."""
    import contextlib

    if not needed:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _step(student, teacher, views, labels, held_out, config, names, params, module_buffers, teacher_log_p,
          buffers_copy, train_domains) -> StepResult:
    """The body of ``meta_step`` once the inputs are checked and the held-out domain is known."""
    train_buffers = buffers_copy()
    l_train, terms = _domain_losses(
        student, params, train_buffers, teacher, teacher_log_p,
        [views[d] for d in train_domains], labels, config.train_weights, config.temperature, config.distill, config.kl_reduction,
    )
    metrics = {"loss_train": float(l_train.detach()), **{f"{k}_train": float(v) for k, v in terms.items()}}

    if not config.use_meta:
        grads = torch.autograd.grad(l_train, [params[n] for n in names])
        _copy_back(module_buffers, train_buffers)
        metrics["loss_total"] = metrics["loss_train"]
        return StepResult(dict(zip(names, grads)), metrics, None)

    second_order = not config.first_order
    inner_grads = torch.autograd.grad(l_train, [params[n] for n in names], create_graph=second_order, retain_graph=second_order)
    if second_order:
        fast = {n: params[n] - config.inner_lr * g for n, g in zip(names, inner_grads)}
    else:
        fast = {n: (params[n] - config.inner_lr * g).detach().requires_grad_(True) for n, g in zip(names, inner_grads)}

    l_test, test_terms = _domain_losses(
        student, fast, buffers_copy(), teacher, teacher_log_p,
        [views[held_out]], labels, config.test_weights, config.temperature, config.distill, config.kl_reduction,
    )
    metrics.update({"loss_test": float(l_test.detach()), **{f"{k}_test": float(v) for k, v in test_terms.items()}})

    if second_order:
        total = l_train + config.meta_test_weight * l_test
        grads = torch.autograd.grad(total, [params[n] for n in names])
    else:
        # First order: ∇θ' L_test treated as ∇θ L_test; reuse the meta-train gradient (no second backward).
        test_grads = torch.autograd.grad(l_test, [fast[n] for n in names])
        grads = tuple(g + config.meta_test_weight * tg for g, tg in zip(inner_grads, test_grads))
    metrics["loss_total"] = metrics["loss_train"] + config.meta_test_weight * metrics["loss_test"]
    _copy_back(module_buffers, train_buffers)
    return StepResult(dict(zip(names, grads)), metrics, held_out)


def _copy_back(module_buffers: Mapping[str, torch.Tensor], updated: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, b in module_buffers.items():
            b.copy_(updated[n])


def apply_grads(student: nn.Module, grads: Mapping[str, torch.Tensor]) -> None:
    """Write ``grads`` into the student's ``.grad`` fields (for the optimizer / all-reduce)."""
    for n, p in student.named_parameters():
        if n in grads:
            p.grad = grads[n].detach().clone()
