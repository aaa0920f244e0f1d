"""MID's multi-consistency losses (DESIGN.md, "The algorithm, exactly").

Notation: ``z = E(x)`` features, either a feature map ``(N, C, H, W)`` or a vector ``(N, C)``.
``p(z) = softmax(z / T)`` over the channel dimension (dim 1), i.e. per spatial position for a feature map,
as the official code does. Every KL here is a true KL divergence KL(p_teacher || p_other), by default with
"batchmean" reduction: summed over channels and positions, averaged over the batch ("elementmean", the official
code's ``nn.KLDivLoss()`` default, also divides by the number of feature elements). The teacher side is
always a detached probability distribution; nothing passes log-probabilities as a probability target
(the official release's cyclic-consistency bug).

Functions return per-sample losses ``(N,)`` so that several attack views concatenated into one batch
can be split back per view without changing the math.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Weights of L = w_ac * AC + w_cc * CC + w_lc * LC. A weight of 0 switches that term off."""

    ac: float = 1.5
    cc: float = 0.8
    lc: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ac", "cc", "lc"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name}={getattr(self, name)} must be >= 0")


def feature_log_probs(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(z) = log_softmax(z / T) over channels (dim 1). Same shape as ``z``."""
    return F.log_softmax(z / temperature, dim=1)


KL_REDUCTIONS = ("batchmean", "elementmean")


def per_sample_kl(teacher_log_p: torch.Tensor, other_log_p: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(p_t || p_o) per sample ``(N,)``.

    Both arguments are log-probabilities of the same shape; the target is converted with
    ``log_target=True`` semantics (p_t = exp(log p_t)), which is exact and never NaN.

    ``reduction`` says what a sample's value is (the batch average is taken by the caller):
      * ``"batchmean"``: the sum over every non-batch dimension, i.e. the true KL summed over feature positions
        (PyTorch's ``reduction="batchmean"`` once averaged over the batch). DESIGN.md's definition.
      * ``"elementmean"``: that sum divided by the number of feature elements per sample (C, or C*H*W), i.e.
        ``nn.KLDivLoss()``'s default ``reduction="mean"`` once averaged over the batch. This is what the official
        MID code computes, and its 1.5 / 0.8 weights were tuned against it: relative to the label term it makes
        AC and CC smaller by a factor of C*H*W (3,136 in the official encoder; 1,024 for our 32/64-channel LeNet, 256
        for the classic one).
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"KL reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    kl = F.kl_div(other_log_p, teacher_log_p, reduction="none", log_target=True).flatten(1)
    return kl.sum(dim=1) if reduction == "batchmean" else kl.mean(dim=1)


def adversarial_consistency(
    teacher_log_p: torch.Tensor, student_z: torch.Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> torch.Tensor:
    """AC = KL( p(E_t(x)) || p(E_s(x_a)) ) per sample ``(N,)``; ``teacher_log_p`` must be detached."""
    return per_sample_kl(teacher_log_p, feature_log_probs(student_z, temperature), reduction)


def cyclic_consistency(
    teacher_log_p: torch.Tensor,
    student_z: torch.Tensor,
    teacher_encoder: torch.nn.Module,
    teacher_decoder: torch.nn.Module,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """CC = KL( p(E_t(x)) || p(E_t(D_t(E_s(x_a)))) ) per sample ``(N,)``.

    Gradients flow through the frozen D_t and E_t back into the student features.
    """
    regenerated = teacher_decoder(student_z)
    re_encoded = teacher_encoder(regenerated)
    return per_sample_kl(teacher_log_p, feature_log_probs(re_encoded, temperature), reduction)


def label_consistency(student_z: torch.Tensor, teacher_classifier: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """LC = CE( C_t(E_s(x_a)), y ) per sample ``(N,)``."""
    return F.cross_entropy(teacher_classifier(student_z), labels, reduction="none")
