"""``AttackSpec``: the full, JSON-able description of one attack (what the adversarial store and MLflow record),
and the names it is built from: attack kinds, the paper's Table 2 columns, the library class of each kind."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

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
