"""The fixed test sets of a direct run, saved once and loaded by other runs against the same teacher.

Several runs on one GPU (scripts/gpu_session.sh) score their models on the same ``paper`` set (every evaluation
attack against the teacher) and ``transfer`` set (against the substitute). Generating them costs about a minute per
protocol on an H200, mostly CW and JSMA; one run generates and saves them, the others load them. The file records
what the sets were made from, and a run whose teacher, data or attack settings differ refuses it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mid_core.checkpoint import atomic_torch_save
from mid_core.training import param_fingerprint
from pipeline.config import ExperimentConfig

FixedSets = dict[str, dict[str, torch.Tensor]]  # protocol -> attack column -> adversarial images (n, C, H, W)


def sets_identity(cfg: ExperimentConfig, teacher: torch.nn.Module, test_images: int, slow_images: int) -> dict[str, Any]:
    """What the fixed sets depend on: data, test-set size, evaluation attacks and seed, and the teacher's weights."""
    ev = cfg.evaluation
    return {"dataset": cfg.data.dataset, "test_images": test_images, "slow_images": slow_images,
            "attacks": list(ev.attacks), "eps": ev.eps, "steps": ev.steps, "step_size": ev.step_size,
            "seed": cfg.seed, "substitute_seed_offset": cfg.teacher.substitute_seed_offset,
            "teacher": [float(v) for v in param_fingerprint(teacher)]}


def save_fixed_sets(path: Path, sets: FixedSets, identity: dict[str, Any]) -> None:
    """Write ``sets`` (moved to the CPU) with ``identity``, atomically (temp file, then rename)."""
    atomic_torch_save({"identity": identity,
                       "sets": {p: {a: t.detach().cpu() for a, t in cols.items()} for p, cols in sets.items()}}, path)


def load_fixed_sets(path: Path, identity: dict[str, Any], protocols: list[str], device: torch.device) -> FixedSets:
    """The sets of those ``protocols`` that ``path`` holds (a run generates the others), on ``device``;
    ``ValueError`` naming what differs when the file was made for another teacher, data set or attack setting."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    theirs = payload.get("identity", {})
    differ = sorted(k for k in identity.keys() | theirs.keys() if identity.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"{path} was made for other settings ({', '.join(differ)} differ): remove it or pass "
                         "another --fixed-sets path, and the sets are regenerated")
    return {p: {a: t.to(device) for a, t in payload["sets"][p].items()} for p in protocols if p in payload["sets"]}
