"""Attacks for MID: declarative specs (``spec``), the paper's defaults per table column (``defaults``) and one runner
over advertorch (PGD, MIM, FGSM, BIM, CW-L2, JSMA) and AutoAttack (``run``).

advertorch 0.2.3 needs a compatibility shim on current PyTorch; it lives only in ``_advertorch_compat``.
"""
from ._advertorch_compat import import_advertorch_attacks
from .defaults import default_spec
from .run import AttackOutput, frozen_eval, random_targets, rng_fork_devices, run_attack
from .spec import ADVERTORCH_CLASSES, ATTACK_KINDS, AUTOATTACK_ATTACKS, LINF_KINDS, PAPER_COLUMNS, AttackSpec

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
    "rng_fork_devices",
    "run_attack",
]
