"""Robust-accuracy evaluation and AutoAttack-style sanity checks (pure PyTorch).

Protocols (see DESIGN.md): ``evaluate_attack`` is the *white-box* protocol (the attack is computed on the
scored model itself); ``score_fixed_adversarial`` scores precomputed images, i.e. the *paper* protocol
(fixed sets generated on the pool's source model) and the *transfer* protocol (sets generated on a substitute).

Threat models: ``threat_model_summary`` turns the per-image outcomes of a row's budgeted attacks (L-inf, L2, L1)
into per-norm worst cases and their union (robust only if every attack of every norm fails on the image).

Sanity checks, in the spirit of ``autoattack/checks.py`` (Croce & Hein): robust accuracy never above clean
accuracy, perturbations inside eps (in the attack's norm), more attack steps never raising accuracy, and signs of
gradient masking (zero / non-finite input gradients, random noise beating PGD, PGD raising the loss no more than
noise).
Each check returns human-readable messages; ``run_sanity_checks`` also emits them as ``SanityWarning``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .attacks import AttackSpec, default_spec, frozen_eval, perturbation_size, random_targets, run_attack
from .quantize import from_uint8, quantize_adversarial

BENIGN_KEYS = ("benign", "clean")
SUMMARY_COLUMNS = ("mean_attacks", "mean_with_benign", "worst_case")  # computed by summarize_row
BUDGET_NORMS = ("linf", "l2", "l1")  # the norms with a per-norm worst case (threat_model_summary)
THREAT_MODEL_KEYS = ("worst_linf", "worst_l2", "worst_l1", "union")  # computed by threat_model_summary


def _model_device(model: nn.Module, default: torch.device) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return default


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    return from_uint8(images) if images.dtype == torch.uint8 else images


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels ``(N,)`` int64 on ``images``' device; eval mode and no grad (model modes restored).

    ``images`` may be float in [0, 1] or uint8 (stored 8-bit images). Batches run on the model's device.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    device = _model_device(model, images.device)
    preds = []
    with frozen_eval(model), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = _as_float_images(images[start:start + batch_size]).to(device)
            preds.append(model(batch).argmax(dim=1).to(images.device))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=images.device)
    return torch.cat(preds)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of ``images`` classified as ``labels``, in [0, 1]."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((predict(model, images, batch_size) == labels.to(images.device)).float().mean())


def score_fixed_adversarial(model: nn.Module, adversarial: torch.Tensor, labels: torch.Tensor,
                            batch_size: int = 256) -> float:
    """Accuracy on precomputed (stored or transferred) adversarial images, float in [0, 1] or uint8."""
    return accuracy(model, adversarial, labels, batch_size)


@dataclass
class AttackResult:
    """One white-box attack on one model.

    * ``accuracy``: robust accuracy, the fraction of all ``num_images`` classified correctly after the attack.
    * ``success_rate``: among the images the model classified correctly *before* the attack, the fraction it
      misclassifies after it (NaN when it got none right). For targeted attacks this counts any
      misclassification; ``target_hit_rate`` is the fraction of all images classified as their target.
    * ``max_linf``: the largest absolute pixel change over the whole set.
    """

    name: str
    accuracy: float
    success_rate: float
    max_linf: float
    num_images: int
    clean_accuracy: float = float("nan")
    target_hit_rate: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_attack(spec: AttackSpec, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                    batch_size: int = 256, seed: int = 0, num_classes: int = 10, quantize: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> tuple[AttackResult, torch.Tensor]:
    """White-box evaluation: run ``spec`` against ``model`` itself in batches and score the result.

    Deterministic given ``seed`` (targets for targeted specs are drawn for the whole set first, so they do
    not depend on ``batch_size``). ``quantize=True`` scores 8-bit images (``quantize_adversarial``) as the
    store does. ``progress(done, total)`` is called after every batch. Returns the result and the adversarial
    images (float, on ``images``' device).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n = images.shape[0]
    if n == 0 or labels.shape[0] != n:
        raise ValueError(f"need a non-empty set with one label per image, got {n} images and {labels.shape[0]} labels")
    images = _as_float_images(images)
    labels = labels.to(images.device).long()
    device = _model_device(model, images.device)
    generator = torch.Generator().manual_seed(seed)
    targets = random_targets(labels, num_classes, generator) if spec.targeted else None
    chunks = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        xb = images[start:stop].to(device)
        yb = labels[start:stop].to(device)
        tb = targets[start:stop].to(device) if targets is not None else None
        adv = run_attack(spec, model, xb, yb, num_classes=num_classes, generator=generator, targets=tb).adversarial
        if quantize:
            adv = from_uint8(quantize_adversarial(adv, xb, spec.linf_eps)).to(device)
        chunks.append(adv.to(images.device))
        if progress is not None:
            progress(stop, n)
    adversarial = torch.cat(chunks)

    clean_ok = predict(model, images, batch_size) == labels
    adv_pred = predict(model, adversarial, batch_size)
    adv_ok = adv_pred == labels
    n_clean_ok = int(clean_ok.sum())
    result = AttackResult(
        name=spec.name,
        accuracy=float(adv_ok.float().mean()),
        success_rate=float((clean_ok & ~adv_ok).sum()) / n_clean_ok if n_clean_ok else float("nan"),
        max_linf=float((adversarial - images).abs().max()),
        num_images=n,
        clean_accuracy=float(clean_ok.float().mean()),
        target_hit_rate=float((adv_pred == targets).float().mean()) if targets is not None else None,
    )
    return result, adversarial


def summarize_row(accuracies: Mapping[str, float]) -> dict:
    """A table row: the given columns plus ``mean_attacks``, ``mean_with_benign`` and ``worst_case``.

    * ``mean_attacks``: the mean over the attack columns (benign excluded). The paper's MNIST and Fashion-MNIST MID
      rows of Table 2 (94.77, 85.56) are this mean over its 12 attack columns.
    * ``mean_with_benign``: the mean over all columns including benign, as the paper's other Table 2 rows (e.g.
      CIFAR-10 MID, (64.48 + 69.88 + ... + 65.70) / 13 = 59.25). Without a ``benign`` (or ``clean``) entry it
      equals ``mean_attacks``.
    * ``worst_case``: the minimum over the attack columns (benign excluded).

    Columns come out as benign first, then the paper's attack order, then any other attacks.
    """
    from .attacks import PAPER_COLUMNS

    reserved = set(SUMMARY_COLUMNS) & set(accuracies)
    if reserved:
        raise ValueError(f"{sorted(reserved)} are computed by summarize_row, not inputs")
    for key, value in accuracies.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"accuracy for {key!r} must be a finite number, got {value!r}")
    benign_keys = [k for k in accuracies if k in BENIGN_KEYS]
    if len(benign_keys) > 1:
        raise ValueError(f"give the benign accuracy once, got {benign_keys}")
    attacks = [k for k in PAPER_COLUMNS if k in accuracies] + \
              [k for k in accuracies if k not in PAPER_COLUMNS and k not in BENIGN_KEYS]
    if not attacks:
        raise ValueError("summarize_row needs at least one attack column")
    row: dict = {k: float(accuracies[k]) for k in benign_keys}
    row.update({k: float(accuracies[k]) for k in attacks})
    attack_values = [float(accuracies[k]) for k in attacks]
    all_values = [float(accuracies[k]) for k in benign_keys] + attack_values
    row["mean_attacks"] = sum(attack_values) / len(attack_values)
    row["mean_with_benign"] = sum(all_values) / len(all_values)
    row["worst_case"] = min(attack_values)
    return row


def threat_model_summary(clean_correct: torch.Tensor, correct: Mapping[str, torch.Tensor],
                         norms: Mapping[str, str]) -> dict:
    """Per-sample worst cases of a row over threat models.

    ``clean_correct``: bool ``(N,)``, the model right on the clean images; ``correct``: attack name -> bool ``(N,)``,
    the model right on that attack's adversarial images (the same N images for every attack); ``norms``: attack
    name -> the norm its budget is in (``AttackSpec.norm``). Attacks in a norm outside ``BUDGET_NORMS`` are ignored.

    * ``worst_<norm>`` (``worst_linf``, ``worst_l2``, ``worst_l1``): the fraction of images the model gets right
      clean and under every attack of that norm; ``None`` when no attack has that norm.
    * ``union``: the fraction right clean and under every attack of every norm, i.e. the per-image AND of the
      per-norm worst cases; so it is never above any of them. ``None`` without any budgeted attack.
    * ``<key>_over``: the attack names each one is taken over.
    """
    summary: dict = {}
    union = clean_correct.clone()
    over: list[str] = []
    for norm in BUDGET_NORMS:
        names = [name for name in correct if norms[name] == norm]
        robust = clean_correct.clone()
        for name in names:
            robust &= correct[name].to(robust.device)
        summary[f"worst_{norm}"] = float(robust.float().mean()) if names else None
        summary[f"worst_{norm}_over"] = names
        union &= robust
        over += names
    summary["union"] = float(union.float().mean()) if over else None
    summary["union_over"] = over
    return summary


def budgeted_outcomes(model: nn.Module, labels: torch.Tensor, adversarial: Mapping[str, torch.Tensor],
                      specs: Mapping[str, AttackSpec], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Attack name -> bool ``(N,)``, the model right on that attack's adversarial images ``(N, C, H, W)``, for the
    attacks of ``adversarial`` whose spec has a budget in one of ``BUDGET_NORMS`` (``threat_model_summary``'s
    ``correct``)."""
    return {name: predict(model, adv, batch_size) == labels.to(adv.device)
            for name, adv in adversarial.items()
            if specs[name].budget_eps is not None and specs[name].norm in BUDGET_NORMS}


# --------------------------------------------------------------------------------------------------------
# Sanity checks


class SanityWarning(UserWarning):
    """An evaluation result that looks unreliable (see the message)."""


def check_robust_not_above_clean(clean_acc: float, robust: Mapping[str, float], tol: float = 1e-9) -> list[str]:
    """Robust accuracy above clean accuracy means the attack is weaker than doing nothing.

    Impossible for AutoAttack, a bug or a broken attack for white-box PGD-style attacks, and in the
    transfer/paper protocols a sign that the stored attack does not transfer to this model.
    """
    return [
        f"[robust_above_clean] {name}: robust accuracy {acc:.4f} is above clean accuracy {clean_acc:.4f}"
        for name, acc in robust.items()
        if acc > clean_acc + tol
    ]


def check_perturbation_within_eps(clean: torch.Tensor, adversarial: torch.Tensor, eps: float,
                                  tol: float | None = None, *, name: str = "attack", norm: str = "linf") -> list[str]:
    """Every adversarial image lies within ``eps`` (+ ``tol``) of its clean image in ``norm`` (``linf``, ``l2`` or
    ``l1``), in [0, 1], and is finite.

    Float or uint8 inputs. ``tol=None`` is one 8-bit level for L-inf (images quantised by rounding) and
    ``1e-4 * eps`` for L2 / L1 (float rounding of the attacks' projections; those outputs are not quantised).
    """
    if tol is None:
        tol = 1 / 255 + 1e-6 if norm == "linf" else 1e-4 * eps + 1e-6
    clean_f = _as_float_images(clean).to(torch.float32)
    adv_f = _as_float_images(adversarial).to(device=clean_f.device, dtype=torch.float32)
    if clean_f.shape != adv_f.shape:
        return [f"[perturbation] {name}: shape {tuple(adv_f.shape)} differs from clean {tuple(clean_f.shape)}"]
    messages = []
    finite = torch.isfinite(adv_f).flatten(1).all(1)
    if not bool(finite.all()):
        messages.append(f"[perturbation] {name}: {int((~finite).sum())} images contain NaN or inf")
    adv_f = torch.nan_to_num(adv_f, nan=0.0, posinf=1.0, neginf=0.0)
    per_image = perturbation_size(adv_f - clean_f, norm) if adv_f.numel() else adv_f.new_zeros(0)
    over = per_image > eps + tol
    if bool(over.any()):
        label = {"linf": "L-inf", "l2": "L2", "l1": "L1"}[norm]
        messages.append(f"[perturbation] {name}: {int(over.sum())} of {len(per_image)} images exceed {label} "
                        f"eps={eps:.6f} (max {float(per_image.max()):.6f}, tolerance {tol:.6f})")
    if adv_f.numel() and (float(adv_f.min()) < -1e-6 or float(adv_f.max()) > 1 + 1e-6):
        messages.append(f"[perturbation] {name}: pixels outside [0, 1] "
                        f"(range [{float(adv_f.min()):.4f}, {float(adv_f.max()):.4f}])")
    return messages


def check_more_steps_not_better(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
                                seed: int = 0, *, max_images: int = 32, num_classes: int = 10,
                                tol: float = 0.0) -> list[str]:
    """Run ``spec`` and the same spec with twice the iterations on the first ``max_images`` images.

    Doubling the steps (``cw_max_iterations`` for CW) should never raise robust accuracy by more than ``tol``;
    if it does the attack has not converged or the loss surface is being masked. FGSM, JSMA and AutoAttack have
    no step count to double and return no messages.
    """
    if spec.kind in ("pgd", "mim", "bim"):
        longer = dataclasses.replace(spec, steps=2 * spec.steps)
        what = f"steps {spec.steps} -> {longer.steps}"
    elif spec.kind == "cw":
        longer = dataclasses.replace(spec, cw_max_iterations=2 * spec.cw_max_iterations)
        what = f"iterations {spec.cw_max_iterations} -> {longer.cw_max_iterations}"
    else:
        return []
    x, y = images[:max_images], labels[:max_images]
    accs = []
    for s in (spec, longer):
        res, _ = evaluate_attack(s, model, x, y, batch_size=max(1, x.shape[0]), seed=seed, num_classes=num_classes)
        accs.append(res.accuracy)
    if accs[1] > accs[0] + tol:
        return [f"[more_steps] {spec.name}: robust accuracy rose from {accs[0]:.4f} to {accs[1]:.4f} with {what} "
                f"on {x.shape[0]} images; the attack has not converged or gradients are unreliable"]
    return []


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample attacker objective that does not saturate: best other logit minus the true logit."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return other.amax(1) - true


def check_gradient_masking(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                           seed: int = 0, *, max_images: int = 32, noise_draws: int = 4, pgd_steps: int = 20,
                           max_zero_grad_fraction: float = 0.05, tol: float = 0.0,
                           num_classes: int = 10) -> list[str]:
    """Cheap signs that gradient-based attacks are being fooled (first ``max_images`` images).

    1. Input gradients of the logit margin (which, unlike cross-entropy, does not saturate) that are
       non-finite, or exactly zero for more than ``max_zero_grad_fraction`` of the images.
    2. Random sign noise of size ``eps`` (worst of ``noise_draws``) lowers accuracy more than PGD.
    3. PGD raises the margin above the random-noise margin on fewer than half of the images.
    """
    x = _as_float_images(images[:max_images])
    y = labels[:max_images].to(x.device).long()
    device = _model_device(model, x.device)
    x, y = x.to(device), y.to(device)
    n = x.shape[0]
    if n == 0:
        return []
    messages = []
    with frozen_eval(model), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        margin = _margin(model(xg), y)
        if not margin.requires_grad:  # the forward cuts the graph (detach, no_grad, numpy round trip, ...)
            return messages + ["[gradient_masking] the model's output does not depend differentiably on its input "
                               "(no gradient graph); gradient-based attacks cannot run on it"]
        grad = torch.autograd.grad(margin.sum(), xg, allow_unused=True)[0]
    if grad is None:
        grad = torch.zeros_like(x)
    flat = grad.flatten(1)
    nonfinite = ~torch.isfinite(flat).all(1)
    zero = (flat.abs().sum(1) == 0) & ~nonfinite
    if bool(nonfinite.any()):
        messages.append(f"[gradient_masking] {int(nonfinite.sum())} of {n} images have non-finite input gradients")
    if float(zero.float().mean()) > max_zero_grad_fraction:
        messages.append(f"[gradient_masking] {int(zero.sum())} of {n} images have exactly zero input gradients; "
                        "gradient-based attacks cannot work there (e.g. rounding/quantisation in forward)")

    generator = torch.Generator().manual_seed(seed)
    pgd = default_spec("PGD_N", eps=eps, steps=pgd_steps, step_size=2.5 * eps / pgd_steps)
    x_pgd = run_attack(pgd, model, x, y, num_classes=num_classes, generator=generator).adversarial
    noise_ok = torch.ones(n, dtype=torch.bool, device=device)
    noise_margin = torch.full((n,), float("-inf"), device=device)
    with frozen_eval(model), torch.no_grad():
        for _ in range(noise_draws):
            signs = torch.randint(0, 2, x.shape, generator=generator).to(device=device, dtype=x.dtype) * 2 - 1
            logits = model((x + eps * signs).clamp(0, 1))
            noise_ok &= logits.argmax(1) == y
            noise_margin = torch.maximum(noise_margin, _margin(logits, y))
        pgd_logits = model(x_pgd)
    pgd_acc = float((pgd_logits.argmax(1) == y).float().mean())
    noise_acc = float(noise_ok.float().mean())
    if noise_acc < pgd_acc - tol:
        messages.append(f"[gradient_masking] random noise (eps={eps}) gives lower accuracy ({noise_acc:.4f}) than "
                        f"PGD-{pgd_steps} ({pgd_acc:.4f}) on {n} images")
    raised = float((_margin(pgd_logits, y) > noise_margin).float().mean())
    if raised < 0.5:
        messages.append(f"[gradient_masking] PGD-{pgd_steps} beats random noise on the attacker's margin for "
                        f"only {raised:.0%} of {n} images")
    return messages


def run_sanity_checks(*, clean_accuracy: float | None = None, robust: Mapping[str, float] | None = None,
                      clean_images: torch.Tensor | None = None,
                      adversarial: Mapping[str, torch.Tensor] | None = None,
                      specs: Mapping[str, AttackSpec] | None = None,
                      model: nn.Module | None = None, images: torch.Tensor | None = None,
                      labels: torch.Tensor | None = None, masking_eps: float | None = 0.3,
                      more_steps_specs: Iterable[AttackSpec] = (), seed: int = 0, num_classes: int = 10,
                      max_images: int = 32, warn: bool = True) -> list[str]:
    """Run every check whose inputs are given; emit each message as a ``SanityWarning`` and return them.

    * ``clean_accuracy`` + ``robust``: ``check_robust_not_above_clean``.
    * ``clean_images`` + ``adversarial`` (name -> images) + ``specs`` (name -> spec): the eps check for each
      attack with a budget, in its norm (L-inf, L2 or L1; ``AttackSpec.budget_eps``).
    * ``model`` + ``images`` + ``labels``: ``check_gradient_masking`` at ``masking_eps`` (skip with None) and
      ``check_more_steps_not_better`` for each of ``more_steps_specs``.
    """
    messages: list[str] = []
    if clean_accuracy is not None and robust:
        messages += check_robust_not_above_clean(clean_accuracy, robust)
    if clean_images is not None and adversarial:
        for name, adv in adversarial.items():
            spec = (specs or {}).get(name)
            if spec is not None and spec.budget_eps is not None and spec.norm in BUDGET_NORMS:
                messages += check_perturbation_within_eps(clean_images, adv, spec.budget_eps, name=name,
                                                          norm=spec.norm)
    if model is not None and images is not None and labels is not None:
        if masking_eps is not None:
            messages += check_gradient_masking(model, images, labels, masking_eps, seed,
                                               max_images=max_images, num_classes=num_classes)
        for spec in more_steps_specs:
            messages += check_more_steps_not_better(model, images, labels, spec, seed,
                                                    max_images=max_images, num_classes=num_classes)
    if warn:
        for msg in messages:
            warnings.warn(msg, SanityWarning, stacklevel=2)
    return messages
