"""Attack registry: one declarative ``AttackSpec`` per table column, run through advertorch or AutoAttack.

* ``AttackSpec`` is the full, JSON-able description of one attack (it is what the adversarial store records).
* ``default_spec("PGD_N")`` gives the paper / official-code settings for a table column.
* ``run_attack`` runs a spec against a model that maps [0, 1] images to logits.

Defaults (paper Sec. 4.1 "eps = 0.3", and the official MNIST code mln66/MID ``MNIST/meta_defense_MNIST.py``,
which is where the values the paper does not state come from):

====== ===================== =============================================================================
column class                 settings
====== ===================== =============================================================================
PGD    LinfPGDAttack         eps 0.3, 40 steps of 0.01, random start, 1 restart
MIM    LinfMomentum...       eps 0.3, 40 steps of 0.01, decay 1.0 (no random start)
FGSM   GradientSignAttack    one step of size eps = 0.3
BIM    LinfBasicIterative... eps 0.3, 40 steps of 0.05 (official code; advertorch's own default is 10 steps)
CW     CarliniWagnerL2Attack L2, unbounded; confidence 1, lr 0.01, 4 binary-search steps, 500 iterations,
                             initial const 1 (official code)
JSMA   JacobianSaliency...   L0; theta 1.0, gamma 1.0 (official code = advertorch defaults); targeted only
AA     pyautoattack          L-inf eps 0.3, version "standard"; untargeted only
====== ===================== =============================================================================

Targeted attacks use ``random_targets`` (uniform over the classes other than the true label), as the paper
describes; the official code used the constant target 0 instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._advertorch_compat import import_advertorch_attacks

ATTACK_KINDS: tuple[str, ...] = ("pgd", "mim", "fgsm", "bim", "cw", "jsma", "autoattack")

# Paper Table 2 attack columns, in table order (the "Benign" column is separate).
PAPER_COLUMNS: tuple[str, ...] = (
    "PGD_N", "PGD_T", "MIM_N", "MIM_T", "FGSM_N", "FGSM_T", "BIM_N", "BIM_T", "CW_N", "CW_T", "AA_N", "JSMA_T",
)

# Column prefix -> kind.
_PREFIX_TO_KIND: dict[str, str] = {
    "PGD": "pgd", "MIM": "mim", "FGSM": "fgsm", "BIM": "bim", "CW": "cw", "JSMA": "jsma", "AA": "autoattack",
}

ADVERTORCH_CLASSES: dict[str, str] = {
    "pgd": "LinfPGDAttack",
    "mim": "LinfMomentumIterativeAttack",
    "fgsm": "GradientSignAttack",
    "bim": "LinfBasicIterativeAttack",
    "cw": "CarliniWagnerL2Attack",
    "jsma": "JacobianSaliencyMapAttack",
}

# Kinds whose output is guaranteed inside an L-inf ball of radius ``eps``.
LINF_KINDS: tuple[str, ...] = ("pgd", "mim", "fgsm", "bim", "autoattack")
# Kinds with a fixed, non-L-inf threat model.
_FIXED_NORMS: dict[str, str] = {"cw": "l2", "jsma": "l0"}

AUTOATTACK_VERSIONS: tuple[str, ...] = ("standard", "plus", "rand", "custom")
AUTOATTACK_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")

TARGET_RULE = "uniform over the classes other than the true label (random_targets)"

# advertorch's JSMA iterates until *every* image of its batch reaches its target (or 392 steps on MNIST), and each
# step computes 10 Jacobians and a (batch, 784, 784) saliency map for the whole batch, finished images included: one
# image that resists makes the whole batch pay its 392 steps. Per image the algorithm is independent of the batch
# (no randomness, per-image search space), so on CPU we run it on chunks of this many images: same adversarial
# images, bit for bit (tests/test_attacks.py), 2.4-2.8x faster on 10 MNIST test images at 1 thread (session 12:
# 67 s as one batch, 24-29 s in chunks of 1, 2 or 5). On a GPU a step costs about the same for any batch size, so
# there the whole batch runs at once.
JSMA_CPU_CHUNK = 2


def _valid_names() -> list[str]:
    return [f"{p}_{s}" for p in _PREFIX_TO_KIND for s in ("N", "T") if (p, s) not in (("JSMA", "N"), ("AA", "T"))]


@dataclass(frozen=True)
class AttackSpec:
    """Everything needed to rerun one attack; ``to_dict`` is what the store and MLflow record.

    ``eps`` is the L-inf radius for pgd / mim / fgsm / bim / autoattack and is ignored by cw (L2, unbounded)
    and jsma (L0); ``linf_eps`` is ``eps`` or ``None`` accordingly. For FGSM ``steps`` is 1 and ``step_size``
    equals ``eps`` (set automatically). ``restarts`` (PGD only) keeps the worst case per sample.
    ``autoattack_attacks`` (with ``autoattack_version="custom"``) runs a subset of AutoAttack's attacks.
    """

    name: str
    kind: str
    targeted: bool
    eps: float = 0.3
    norm: str = "linf"
    steps: int = 40
    step_size: float = 0.01
    decay: float = 1.0
    rand_init: bool = True
    restarts: int = 1
    cw_confidence: float = 1.0
    cw_max_iterations: int = 500
    cw_learning_rate: float = 0.01
    cw_binary_search_steps: int = 4
    cw_initial_const: float = 1.0
    jsma_theta: float = 1.0
    jsma_gamma: float = 1.0
    autoattack_version: str = "standard"
    autoattack_attacks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"unknown attack kind {self.kind!r}; choose one of {list(ATTACK_KINDS)}")
        if not isinstance(self.targeted, bool):
            raise ValueError(f"targeted must be a bool, got {self.targeted!r}")
        if self.kind in _FIXED_NORMS:
            fixed = _FIXED_NORMS[self.kind]
            if self.norm not in ("linf", fixed):  # "linf" is just the field default
                raise ValueError(f"{self.kind} is an {fixed} attack; norm {self.norm!r} is not supported")
            object.__setattr__(self, "norm", fixed)
        elif self.norm != "linf":
            raise ValueError(f"only L-inf is supported for {self.kind}; got norm {self.norm!r}")
        if isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and 0.0 < self.eps <= 1.0):
            raise ValueError(f"eps must be in (0, 1], got {self.eps!r}")
        if self.kind == "fgsm":  # one step of size eps, recorded as such
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "step_size", float(self.eps))
        if self.kind != "pgd":  # only PGD has a random start; record what actually runs
            object.__setattr__(self, "rand_init", False)
        if isinstance(self.steps, bool) or not (isinstance(self.steps, int) and self.steps > 0):
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if not (isinstance(self.step_size, (int, float)) and self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")
        if not (isinstance(self.restarts, int) and self.restarts >= 1):
            raise ValueError(f"restarts must be an int >= 1, got {self.restarts!r}")
        if self.restarts > 1 and not (self.kind == "pgd" and self.rand_init):
            raise ValueError("restarts > 1 only makes sense for PGD with rand_init=True (other attacks are deterministic)")
        if self.decay < 0:
            raise ValueError(f"decay must be >= 0, got {self.decay!r}")
        if self.cw_max_iterations <= 0 or self.cw_binary_search_steps <= 0 or self.cw_learning_rate <= 0:
            raise ValueError("cw_max_iterations, cw_binary_search_steps and cw_learning_rate must be > 0")
        if not 0.0 < self.jsma_gamma <= 1.0:
            raise ValueError(f"jsma_gamma (fraction of pixels JSMA may change) must be in (0, 1], got {self.jsma_gamma!r}")
        if self.kind == "jsma" and not self.targeted:
            raise ValueError("JSMA is targeted only (advertorch's JacobianSaliencyMapAttack); use JSMA_T")
        if self.kind == "autoattack":
            if self.targeted:
                raise ValueError("only untargeted AutoAttack (AA_N) is supported; AutoAttack's own targeted "
                                 "attacks (apgd-t, fab-t) are already part of version='standard'")
            if self.autoattack_version not in AUTOATTACK_VERSIONS:
                raise ValueError(f"autoattack_version must be one of {list(AUTOATTACK_VERSIONS)}, "
                                 f"got {self.autoattack_version!r}")
        if self.autoattack_attacks is not None:
            attacks = tuple(self.autoattack_attacks)
            bad = [a for a in attacks if a not in AUTOATTACK_ATTACKS]
            if bad or not attacks:
                raise ValueError(f"autoattack_attacks must be a non-empty subset of {list(AUTOATTACK_ATTACKS)}, got {attacks}")
            if self.autoattack_version != "custom":
                raise ValueError("autoattack_attacks needs autoattack_version='custom' (AutoAttack ignores the list otherwise)")
            object.__setattr__(self, "autoattack_attacks", attacks)
        elif self.kind == "autoattack" and self.autoattack_version == "custom":
            raise ValueError("autoattack_version='custom' needs autoattack_attacks")

    @property
    def library(self) -> str:
        """``"autoattack"`` for AutoAttack, else ``"advertorch"``."""
        return "autoattack" if self.kind == "autoattack" else "advertorch"

    @property
    def attack_class(self) -> str:
        """The library class that runs this spec."""
        return "pyautoattack.AutoAttack" if self.kind == "autoattack" else f"advertorch.attacks.{ADVERTORCH_CLASSES[self.kind]}"

    @property
    def linf_eps(self) -> float | None:
        """The L-inf radius every output pixel stays within, or ``None`` for CW (L2) and JSMA (L0)."""
        return float(self.eps) if self.kind in LINF_KINDS else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record of the full spec, plus ``library``, ``attack_class``, ``linf_eps`` and ``target_rule``."""
        d = dataclasses.asdict(self)
        if d["autoattack_attacks"] is not None:
            d["autoattack_attacks"] = list(d["autoattack_attacks"])
        d["library"] = self.library
        d["attack_class"] = self.attack_class
        d["linf_eps"] = self.linf_eps
        d["target_rule"] = TARGET_RULE if self.targeted else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AttackSpec":
        """Inverse of ``to_dict`` (derived keys are checked against the rebuilt spec, unknown keys rejected)."""
        derived = {"library", "attack_class", "linf_eps", "target_rule"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - derived
        if unknown:
            raise ValueError(f"unknown attack spec keys {sorted(unknown)}")
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("autoattack_attacks") is not None:
            kwargs["autoattack_attacks"] = tuple(kwargs["autoattack_attacks"])
        spec = cls(**kwargs)
        for key in derived & set(d):
            if d[key] != spec.to_dict()[key]:
                raise ValueError(f"attack spec field {key}={d[key]!r} does not match the spec ({spec.to_dict()[key]!r})")
        return spec


def default_spec(name: str, **overrides: Any) -> AttackSpec:
    """The paper / official-code spec for a table column ``"<KIND>_<N|T>"``, e.g. ``"PGD_N"``, ``"JSMA_T"``.

    ``overrides`` replace fields (not ``name``, ``kind`` or ``targeted``) and are validated
    (eps in (0, 1], steps > 0, step_size > 0, ...). For FGSM, ``step_size`` follows ``eps``.
    """
    if not isinstance(name, str) or name.count("_") != 1:
        raise ValueError(f"unknown attack {name!r}; valid names: {_valid_names()}")
    prefix, suffix = name.split("_")
    if prefix not in _PREFIX_TO_KIND or suffix not in ("N", "T"):
        raise ValueError(f"unknown attack {name!r}; valid names: {_valid_names()}")
    if name == "JSMA_N":
        raise ValueError("JSMA_N is not available: JSMA is a targeted attack (use JSMA_T)")
    if name == "AA_T":
        raise ValueError("AA_T is not available: only untargeted AutoAttack (AA_N, which already includes "
                         "AutoAttack's targeted APGD-T and FAB-T) is supported")
    kind = _PREFIX_TO_KIND[prefix]
    fixed = {"name", "kind", "targeted"} & set(overrides)
    if fixed:
        raise ValueError(f"cannot override {sorted(fixed)} in default_spec; build an AttackSpec directly")
    field_names = {f.name for f in dataclasses.fields(AttackSpec)}
    unknown = set(overrides) - field_names
    if unknown:
        raise ValueError(f"unknown attack spec fields {sorted(unknown)}; valid: {sorted(field_names - fixed)}")

    base: dict[str, Any] = {"eps": 0.3, "steps": 40, "step_size": 0.01, "rand_init": False}
    if kind == "pgd":
        base["rand_init"] = True
    elif kind == "mim":
        base["decay"] = 1.0
    elif kind == "bim":
        base["step_size"] = 0.05
    elif kind == "fgsm":
        base["steps"] = 1
    elif kind == "cw":
        base["norm"] = "l2"
    elif kind == "jsma":
        base["norm"] = "l0"
    if kind == "autoattack" and overrides.get("autoattack_attacks") is not None and "autoattack_version" not in overrides:
        base["autoattack_version"] = "custom"
    base.update(overrides)
    return AttackSpec(name=name, kind=kind, targeted=(suffix == "T"), **base)


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
    raise AssertionError(spec.kind)  # pragma: no cover


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

    adversary = AutoAttack(model, norm="Linf", eps=float(spec.eps), version=spec.autoattack_version,
                           attacks=list(spec.autoattack_attacks) if spec.autoattack_attacks else None,
                           device=images.device, seed=seed)
    adversary.verbose = False
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
    gradient reaches ``p.grad``. L-inf outputs are projected once more onto the eps ball and [0, 1].
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
    with frozen_eval(model), torch.enable_grad(), torch.random.fork_rng(devices=fork_devices):
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
    if spec.linf_eps is not None:
        adv = torch.minimum(torch.maximum(adv, images - spec.linf_eps), images + spec.linf_eps)
    return AttackOutput(adv.clamp_(0.0, 1.0), targets)
