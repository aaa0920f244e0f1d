"""``default_spec("PGD_N")``: the paper / official-code settings of a table column as an ``AttackSpec``.

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

White-box threat-model columns (untargeted only, ``WHITEBOX_ONLY_COLUMNS``; not in the paper). Their radii are
MNIST-scale budgets for 28x28 images in [0, 1] (``DEFAULT_EPS``): other image sizes need their own.

======== ===================== ===========================================================================
column   class                 settings
======== ===================== ===========================================================================
AAL2     pyautoattack          L2 eps 1.5, version "standard" (APGD-CE, APGD-T, FAB-T, Square)
APGDL1   pyautoattack          L1 eps 12, version "custom", APGD-CE + APGD-T with the settings of
                               AutoAttack's standard L1 version (large-eps schedule, 5 restarts of
                               APGD-CE, 5 target classes for APGD-T)
DDN      DDNL2Attack           L2, minimum-norm, 100 steps (gamma 0.05, initial norm 1, 8-bit
                               quantisation: advertorch's defaults); judged at eps 1.5: an output farther
                               than eps from its image counts as a failure (the clean image is returned)
FAB      pyautoattack          L-inf eps 0.3, version "custom", untargeted FAB (5 restarts, 100 steps)
STADV    SpatialTransform...   stAdv flow field, no budget (eps ignored): L-BFGS for at most 1000 steps,
                               flow-smoothness weight 1, confidence 0 (advertorch's defaults)
======== ===================== ===========================================================================

Targeted attacks use ``random_targets`` (uniform over the classes other than the true label), as the paper
describes; the official code used the constant target 0 instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .spec import _PREFIX_TO_KIND, DEFAULT_EPS, WHITEBOX_ONLY_COLUMNS, AttackSpec

# The settings of the white-box threat-model columns (the module docstring's second table).
_THREAT_MODEL_BASES: dict[str, dict[str, Any]] = {
    "AAL2": {"norm": "l2", "eps": DEFAULT_EPS["l2"]},
    "APGDL1": {"norm": "l1", "eps": DEFAULT_EPS["l1"], "autoattack_version": "custom",
               "autoattack_attacks": ("apgd-ce", "apgd-t")},
    "FAB": {"autoattack_version": "custom", "autoattack_attacks": ("fab",)},
    "DDN": {"norm": "l2", "eps": DEFAULT_EPS["l2"], "steps": 100},
    "STADV": {"norm": "spatial", "steps": 1000},
}


def _valid_names() -> list[str]:
    paper = [f"{p}_{s}" for p in _PREFIX_TO_KIND for s in ("N", "T")
             if p not in _THREAT_MODEL_BASES and (p, s) not in (("JSMA", "N"), ("AA", "T"))]
    return paper + list(WHITEBOX_ONLY_COLUMNS)


def default_spec(name: str, **overrides: Any) -> AttackSpec:
    """The paper / official-code spec for a table column ``"<KIND>_<N|T>"``, e.g. ``"PGD_N"``, ``"JSMA_T"``, or a
    white-box threat-model column (``"AAL2_N"``, ``"APGDL1_N"``, ``"DDN_N"``, ``"FAB_N"``, ``"STADV_N"``).

    ``overrides`` replace fields (not ``name``, ``kind`` or ``targeted``, nor the ``norm`` a threat-model column's
    name fixes) and are validated (L-inf eps in (0, 1], L2 / L1 eps > 0, steps > 0, step_size > 0, ...). For FGSM,
    ``step_size`` follows ``eps``; for PGD, MIM and BIM a given ``eps`` without a ``step_size`` scales the default
    step with it (0.01 at 0.3 -> 0.01 * 8/255 / 0.3 at 8/255).
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
    if prefix in _THREAT_MODEL_BASES and suffix == "T":
        raise ValueError(f"{name} is not available: the white-box threat-model columns are untargeted only "
                         f"(use {prefix}_N)")
    kind = _PREFIX_TO_KIND[prefix]
    fixed = {"name", "kind", "targeted"} & set(overrides)
    own_norm = _THREAT_MODEL_BASES.get(prefix, {}).get("norm", "linf")
    if prefix in _THREAT_MODEL_BASES and overrides.get("norm", own_norm) != own_norm:
        raise ValueError(f"{name} is a {own_norm} attack (its name fixes the norm): drop the norm override and pick "
                         f"the column of the norm you want from {list(WHITEBOX_ONLY_COLUMNS)}")
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
    base.update(_THREAT_MODEL_BASES.get(prefix, {}))
    if kind == "autoattack" and overrides.get("autoattack_attacks") is not None and "autoattack_version" not in overrides:
        base["autoattack_version"] = "custom"
    if "eps" in overrides and "step_size" not in overrides and kind in ("pgd", "mim", "bim"):
        base["step_size"] *= overrides["eps"] / base["eps"]  # the paper's steps are for eps 0.3: keep steps / eps
    base.update(overrides)
    return AttackSpec(name=name, kind=kind, targeted=(suffix == "T"), **base)
