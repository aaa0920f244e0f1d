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

Targeted attacks use ``random_targets`` (uniform over the classes other than the true label), as the paper
describes; the official code used the constant target 0 instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .spec import _PREFIX_TO_KIND, AttackSpec


def _valid_names() -> list[str]:
    return [f"{p}_{s}" for p in _PREFIX_TO_KIND for s in ("N", "T") if (p, s) not in (("JSMA", "N"), ("AA", "T"))]


def default_spec(name: str, **overrides: Any) -> AttackSpec:
    """The paper / official-code spec for a table column ``"<KIND>_<N|T>"``, e.g. ``"PGD_N"``, ``"JSMA_T"``.

    ``overrides`` replace fields (not ``name``, ``kind`` or ``targeted``) and are validated
    (eps in (0, 1], steps > 0, step_size > 0, ...). For FGSM, ``step_size`` follows ``eps``; for PGD, MIM and BIM
    a given ``eps`` without a ``step_size`` scales the default step with it (0.01 at 0.3 -> 0.01 * 8/255 / 0.3 at 8/255).
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
    if "eps" in overrides and "step_size" not in overrides and kind in ("pgd", "mim", "bim"):
        base["step_size"] *= overrides["eps"] / base["eps"]  # the paper's steps are for eps 0.3: keep steps / eps
    base.update(overrides)
    return AttackSpec(name=name, kind=kind, targeted=(suffix == "T"), **base)
