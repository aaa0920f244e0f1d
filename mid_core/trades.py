"""TRADES (Zhang et al., ICML 2019): adversarial training that trades clean accuracy against robustness.

Per batch, the adversarial view maximises the KL divergence between the model's predictions on the clean and the
perturbed image inside the L-inf ball (PGD on the KL, started at x + 0.001 N(0, 1), the reference implementation's
start), then the model minimises

    CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')) / batch

(beta = 6 is the paper's MNIST / CIFAR setting; beta = 1 weighs clean accuracy more). The attack runs with the model
in eval mode (BatchNorm statistics untouched by the search), the loss in train mode, as the reference code
(``yaodongyu/TRADES``, ``trades.py``).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)) summed over classes, averaged over the batch: logits (N, K) -> scalar."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")


def trades_perturb(model: nn.Module, images: torch.Tensor, eps: float, steps: int, step_size: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The TRADES inner maximisation: images (N, C, H, W) in [0, 1] -> adversarial images of the same shape, within
    ``eps`` (L-inf) of ``images`` and in [0, 1], maximising ``trades_kl`` against the clean predictions."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean_logits = model(images)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    adv = (images + 0.001 * noise).clamp(0.0, 1.0).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = trades_kl(model(adv), clean_logits)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step_size * grad.sign()
        adv = torch.min(torch.max(adv, images - eps), images + eps).clamp(0.0, 1.0).detach()
    model.train(was_training)
    return adv


def trades_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    perturb: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    beta: float,
    average_gradients: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """One TRADES epoch: for each batch, ``perturb(model, images)`` gives the adversarial views (e.g.
    ``trades_perturb`` with the config's budget), then one step on CE(clean) + beta * KL(clean || adversarial).

    Returns the mean clean CE, the mean KL term and the clean training accuracy."""
    ce_sum, kl_sum, correct, count = 0.0, 0.0, 0.0, 0
    for images, labels in batches:
        adv = perturb(model, images)
        model.train()
        logits = model(images)
        ce = F.cross_entropy(logits, labels)
        kl = trades_kl(model(adv), logits)
        loss = ce + beta * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if average_gradients is not None:
            average_gradients(model)
        optimizer.step()
        n = labels.shape[0]
        ce_sum += ce.item() * n
        kl_sum += kl.item() * n
        correct += float((logits.argmax(1) == labels).sum())
        count += n
    count = max(count, 1)
    return {"ce": ce_sum / count, "trades_kl": kl_sum / count, "train_accuracy": correct / count}
