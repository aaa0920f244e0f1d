"""Attacks for MID: a registry of specs over advertorch (PGD, MIM, FGSM, BIM, CW-L2, JSMA) and AutoAttack.

advertorch 0.2.3 needs a compatibility shim on current PyTorch; it lives only in ``_advertorch_compat``.
"""
from ._advertorch_compat import import_advertorch_attacks
from .registry import (
    ADVERTORCH_CLASSES,
    ATTACK_KINDS,
    AUTOATTACK_ATTACKS,
    LINF_KINDS,
    PAPER_COLUMNS,
    AttackOutput,
    AttackSpec,
    default_spec,
    frozen_eval,
    random_targets,
    run_attack,
)

__all__ = [
    "ADVERTORCH_CLASSES",
    "ATTACK_KINDS",
    "AUTOATTACK_ATTACKS",
    "LINF_KINDS",
    "PAPER_COLUMNS",
    "AttackOutput",
    "AttackSpec",
    "default_spec",
    "frozen_eval",
    "import_advertorch_attacks",
    "random_targets",
    "run_attack",
]
