"""``AttackSpec``: the full, JSON-able description of one attack (what the adversarial store and MLflow record),
and the names it is built from: attack kinds, the paper's Table 2 columns, the white-box threat-model columns, the
library class of each kind and the budget (norm, eps) each kind is judged at."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ATTACK_KINDS: tuple[str, ...] = ("pgd", "mim", "fgsm", "bim", "cw", "jsma", "autoattack", "ddn", "spatial")

# Paper Table 2 attack columns, in table order (the "Benign" column is separate).
PAPER_COLUMNS: tuple[str, ...] = (
    "PGD_N", "PGD_T", "MIM_N", "MIM_T", "FGSM_N", "FGSM_T", "BIM_N", "BIM_T", "CW_N", "CW_T", "AA_N", "JSMA_T",
)

# White-box threat-model columns beyond the paper's L-inf ones (untargeted only; see ``defaults``): L2 AutoAttack,
# AutoAttack's L1 APGD, DDN (L2, minimum-norm, judged at the budget), FAB (L-inf) and stAdv (spatial, no budget).
# They are computed on the scored model itself only: the fixed stores of the paper / transfer protocols hold L-inf
# attacks.
WHITEBOX_ONLY_COLUMNS: tuple[str, ...] = ("AAL2_N", "APGDL1_N", "DDN_N", "FAB_N", "STADV_N")

# Column prefix -> kind.
_PREFIX_TO_KIND: dict[str, str] = {
    "PGD": "pgd", "MIM": "mim", "FGSM": "fgsm", "BIM": "bim", "CW": "cw", "JSMA": "jsma", "AA": "autoattack",
    "AAL2": "autoattack", "APGDL1": "autoattack", "FAB": "autoattack", "DDN": "ddn", "STADV": "spatial",
}

ADVERTORCH_CLASSES: dict[str, str] = {
    "pgd": "LinfPGDAttack",
    "mim": "LinfMomentumIterativeAttack",
    "fgsm": "GradientSignAttack",
    "bim": "LinfBasicIterativeAttack",
    "cw": "CarliniWagnerL2Attack",
    "jsma": "JacobianSaliencyMapAttack",
    "ddn": "DDNL2Attack",
    "spatial": "SpatialTransformAttack",
}

# Kinds whose output is guaranteed inside a ball of radius ``eps`` in the spec's ``norm`` (L-inf for the first four;
# AutoAttack in its ``norm``). DDN is judged at its L2 budget too (``AttackSpec.budget_eps``).
LINF_KINDS: tuple[str, ...] = ("pgd", "mim", "fgsm", "bim", "autoattack")
# Kinds with a fixed, non-L-inf threat model. CW, JSMA and stAdv have no budget: ``eps`` is ignored.
_FIXED_NORMS: dict[str, str] = {"cw": "l2", "jsma": "l0", "ddn": "l2", "spatial": "spatial"}
_UNBOUNDED_KINDS: tuple[str, ...] = ("cw", "jsma", "spatial")
# AutoAttack's norms, spec name -> pyautoattack name.
AUTOATTACK_NORMS: dict[str, str] = {"linf": "Linf", "l2": "L2", "l1": "L1"}
# Default radius per norm for 28x28 images in [0, 1] (MNIST-scale budgets; other image sizes need their own).
DEFAULT_EPS: dict[str, float] = {"linf": 0.3, "l2": 1.5, "l1": 12.0}

AUTOATTACK_VERSIONS: tuple[str, ...] = ("standard", "plus", "rand", "custom")
AUTOATTACK_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")

TARGET_RULE = "uniform over the classes other than the true label (random_targets)"


@dataclass(frozen=True)
class AttackSpec:
    """Everything needed to rerun one attack; ``to_dict`` is what the store and MLflow record.

    ``eps`` is the radius in ``norm``: L-inf for pgd / mim / fgsm / bim, AutoAttack's ``norm`` (``linf``, ``l2`` or
    ``l1``) for autoattack, L2 for ddn (a minimum-norm attack judged at this budget: an output farther than ``eps``
    counts as a failed attack, see ``run_attack``). It is ignored by cw (L2, unbounded), jsma (L0) and spatial (stAdv,
    a flow field with a smoothness penalty and no budget). An L-inf ``eps`` must lie in (0, 1]; an L2 / L1 one be
    > 0. ``budget_eps`` is ``eps`` where it bounds the output, else ``None``; ``linf_eps`` the same for L-inf only.
    ``steps`` is also DDN's iteration count and stAdv's L-BFGS iteration limit. For FGSM ``steps`` is 1 and ``step_size``
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
        elif self.kind == "autoattack":
            if self.norm not in AUTOATTACK_NORMS:
                raise ValueError(f"AutoAttack's norm must be one of {list(AUTOATTACK_NORMS)}, got {self.norm!r}")
        elif self.norm != "linf":
            raise ValueError(f"only L-inf is supported for {self.kind}; got norm {self.norm!r}")
        self._check_eps()
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

    def _check_eps(self) -> None:
        """An L-inf (or ignored) ``eps`` lies in (0, 1]; an L2 / L1 radius is a finite number > 0."""
        if self.norm in ("l2", "l1") and self.kind not in _UNBOUNDED_KINDS:
            if isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and 0.0 < self.eps
                                                  and math.isfinite(self.eps)):
                raise ValueError(f"eps is the {self.norm.upper()} radius of {self.name} and must be a finite number "
                                 f"> 0 (e.g. {DEFAULT_EPS[self.norm]} on 28x28 images), got {self.eps!r}")
        elif isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and 0.0 < self.eps <= 1.0):
            raise ValueError(f"eps must be in (0, 1], got {self.eps!r}")

    @property
    def library(self) -> str:
        """``"autoattack"`` for AutoAttack, else ``"advertorch"``."""
        return "autoattack" if self.kind == "autoattack" else "advertorch"

    @property
    def attack_class(self) -> str:
        """The library class that runs this spec."""
        return "pyautoattack.AutoAttack" if self.kind == "autoattack" else f"advertorch.attacks.{ADVERTORCH_CLASSES[self.kind]}"

    @property
    def budget_eps(self) -> float | None:
        """The radius in ``norm`` every output stays within (DDN's outputs beyond it are replaced by the clean
        image), or ``None`` for the attacks without a budget (CW, JSMA, stAdv)."""
        return None if self.kind in _UNBOUNDED_KINDS else float(self.eps)

    @property
    def linf_eps(self) -> float | None:
        """The L-inf radius every output pixel stays within, or ``None`` for attacks in another norm (CW, JSMA, DDN,
        stAdv, L2 / L1 AutoAttack)."""
        return float(self.eps) if self.kind in LINF_KINDS and self.norm == "linf" else None

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
