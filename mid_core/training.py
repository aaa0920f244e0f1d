"""Plain supervised training epochs (teacher autoencoder-classifier, standard classifier).

Pure PyTorch: the caller supplies an iterable of ``(images (N, C, H, W) in [0, 1], labels (N,))`` batches,
so the same functions run inside a Ray Train worker, a notebook or the GPU script.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mid_core.models import Teacher


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Reconstruction error of a sigmoid decoder output against images in [0, 1], averaged over pixels.

    ``'bce'`` (default): binary cross-entropy; ``'l2'``: mean squared error; ``'l1'``: mean absolute error (the
    paper's wording). Measured on MNIST with the classic LeNet (2-3 epochs, 20,000 images): L1 collapsed the decoder
    to a blank image in every run (R² -0.17), L2 in 3 of 5 seeds, BCE in none of 5 (R² 0.78-0.85). The collapse: on
    mostly-black digits the sigmoid is pushed towards 0 early, and L1/L2 gradients carry its vanishing derivative;
    BCE's gradient with respect to the logit is ``sigmoid - x`` and does not vanish. A blank decoder leaves the
    cyclic-consistency loss without gradient (see ``reconstruction_r2`` and docs/results.md).
    """
    if kind == "bce":
        return F.binary_cross_entropy(reconstruction, images)
    if kind == "l2":
        return F.mse_loss(reconstruction, images)
    if kind == "l1":
        return F.l1_loss(reconstruction, images)
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'bce', 'l2' or 'l1'")


def teacher_epoch(
    teacher: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    recon_loss: str = "bce",
    recon_weight: float = 1.0,
    average_gradients: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """One epoch of CE + ``recon_weight`` * reconstruction (CE only for a teacher without a decoder).

    ``average_gradients(teacher)``, when given, runs between backward and the optimizer step (several workers
    average their gradients there). Returns mean loss terms and training accuracy over the epoch.
    """
    teacher.train()
    totals = {"ce": 0.0, "recon": 0.0, "correct": 0.0, "n": 0}
    for images, labels in batches:
        logits, recon = teacher(images)
        ce = F.cross_entropy(logits, labels)
        rec = reconstruction_loss(recon, images, recon_loss) if recon is not None else logits.new_zeros(())
        loss = ce + recon_weight * rec
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if average_gradients is not None:
            average_gradients(teacher)
        optimizer.step()
        n = labels.shape[0]
        totals["ce"] += ce.item() * n
        totals["recon"] += rec.item() * n
        totals["correct"] += float((logits.argmax(1) == labels).sum())
        totals["n"] += n
    n = max(totals["n"], 1)
    return {"ce": totals["ce"] / n, "recon": totals["recon"] / n, "train_accuracy": totals["correct"] / n}


@torch.no_grad()
def reconstruction_r2(teacher: Teacher, images: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of pixel variance the teacher's decoder explains: ``1 - MSE(D(E(x)), x) / Var(x)``.

    ``images``: ``(N, C, H, W)`` in [0, 1]. 1 is a perfect reconstruction; 0 is what a constant (e.g. blank)
    image scores. The paper requires a decoder that restores its inputs (Fig. 7): with R² near 0 the
    cyclic-consistency term E_t(D_t(E_s(x_a))) carries almost no gradient.
    """
    was_training = teacher.training
    teacher.eval()
    se = 0.0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        se += float(((teacher.decoder(teacher.encoder(x)) - x) ** 2).sum())
    teacher.train(was_training)
    return 1.0 - se / (float(((images - images.mean()) ** 2).sum()) + 1e-12)


DECODER_MIN_R2 = 0.5


def decoder_warning(r2: float) -> str | None:
    """A message telling the user how to fix a teacher whose decoder does not reconstruct, else ``None``."""
    if r2 >= DECODER_MIN_R2:
        return None
    return (f"the teacher's decoder reconstructs poorly (R² = {r2:.3f}; 1 = perfect, 0 = a blank image), so the "
            f"cyclic-consistency loss (CC) will carry almost no gradient. Use teacher.recon_loss: bce (L1 and L2 "
            f"can collapse to a blank image on mostly-black images such as MNIST) or another seed, then delete "
            f"models/teacher.pt and the pool stores generated against it and rerun.")


def classifier_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    average_gradients: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """One epoch of cross-entropy training of an images -> logits model.

    With ``attack``, each clean batch is first replaced by ``attack(model, images, labels)`` (the images to train
    on, same shape) before the step: see ``adversarial_epoch``. ``average_gradients`` as in ``teacher_epoch``.
    """
    loss_sum, correct, count = 0.0, 0.0, 0
    for images, labels in batches:
        if attack is not None:
            images = attack(model, images, labels).detach()
        model.train()
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if average_gradients is not None:
            average_gradients(model)
        optimizer.step()
        loss_sum += loss.item() * labels.shape[0]
        correct += float((logits.argmax(1) == labels).sum())
        count += labels.shape[0]
    count = max(count, 1)
    return {"ce": loss_sum / count, "train_accuracy": correct / count}


def adversarial_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    average_gradients: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """One epoch of Madry et al. adversarial training: each clean batch is replaced by ``attack(model, x, y)``
    (e.g. PGD with a random start against the current weights) and the model takes a cross-entropy step on it.

    Returns mean CE and accuracy on the adversarial batches.
    """
    metrics = classifier_epoch(model, batches, optimizer, attack, average_gradients)
    return {"adv_ce": metrics["ce"], "adv_train_accuracy": metrics["train_accuracy"]}


def shuffled_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
    rank: int = 0, world_size: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shuffled mini-batches of an in-memory split (same permutation on every rank)."""
    order = torch.randperm(labels.shape[0], generator=generator)
    order = order[rank::world_size]
    return [(images[order[i:i + batch_size]], labels[order[i:i + batch_size]]) for i in range(0, len(order), batch_size)]


def param_fingerprint(model: nn.Module) -> torch.Tensor:
    """A cheap float64 vector summarising all parameters (for cross-worker equality checks)."""
    return torch.stack([p.detach().double().sum() for p in model.parameters()] +
                       [p.detach().double().abs().sum() for p in model.parameters()])


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr`` (a step schedule applied at the start of an epoch).

    Adam's moment estimates do not depend on the learning rate, so a run resumed from a saved optimizer state and
    given the same schedule takes the same steps as one that never stopped."""
    for group in optimizer.param_groups:
        group["lr"] = lr
