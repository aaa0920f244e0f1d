"""Attacks for MID: declarative specs (``spec``), the paper's defaults per table column (``defaults``) and one runner
over advertorch (PGD, MIM, FGSM, BIM, CW-L2, JSMA, DDN, stAdv) and AutoAttack (L-inf, L2, L1) (``run``).

advertorch 0.2.3 needs a compatibility shim on current PyTorch; it lives only in ``_advertorch_compat``.
"""
from ._advertorch_compat import import_advertorch_attacks
from .defaults import default_spec
from .run import AttackOutput, frozen_eval, perturbation_size, random_targets, rng_fork_devices, run_attack
from .spec import (ADVERTORCH_CLASSES, ATTACK_KINDS, AUTOATTACK_ATTACKS, DEFAULT_EPS, LINF_KINDS, PAPER_COLUMNS,
                   WHITEBOX_ONLY_COLUMNS, AttackSpec)

__all__ = [
    "ADVERTORCH_CLASSES",
    "ATTACK_KINDS",
    "AUTOATTACK_ATTACKS",
    "DEFAULT_EPS",
    "LINF_KINDS",
    "PAPER_COLUMNS",
    "WHITEBOX_ONLY_COLUMNS",
    "AttackOutput",
    "AttackSpec",
    "default_spec",
    "frozen_eval",
    "import_advertorch_attacks",
    "perturbation_size",
    "random_targets",
    "rng_fork_devices",
    "run_attack",
]
