"""The ``transfer`` protocol's adversarial test sets, kept on disk per attack so later evaluations reuse them.

Why: generating them (every attack against the substitute) is nearly all of a transfer evaluation's time, 1,022 s
for the 32/64 LeNet on Fashion-MNIST on a 2-core CPU, while scoring a model on them takes seconds; and they do not
depend on the models being scored. So the first evaluation saves each attack's images
(``stores/transfer_test/<attack>.pt``, float32 exactly as generated, written atomically) and a later one loads them,
but only when everything that determines them matches: the substitute's weights (``checkpoint_fingerprint``, as the
adversarial stores record their source model), the attack spec, the data set, the number of images, the seed and
the batch size (the generator is drawn from batch by batch). Anything else
regenerates and overwrites, so a retrained substitute can never be scored with stale images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mid_core.attacks import AttackSpec
from mid_core.checkpoint import atomic_torch_save


def transfer_identity(substitute_fingerprint: str, spec: AttackSpec, dataset: str, images: int, seed: int,
                      batch_size: int) -> dict[str, Any]:
    """Everything that determines one attack's transfer images; a cached set is used only if all of it matches."""
    return {"substitute_fingerprint": substitute_fingerprint, "spec": spec.to_dict(), "dataset": dataset,
            "images": images, "seed": seed, "batch_size": batch_size}


def load_transfer_set(folder: Path, name: str, identity: dict[str, Any]) -> torch.Tensor | None:
    """The cached adversarial images ``(images, C, H, W)`` of attack ``name``, or None when absent or made otherwise."""
    path = folder / f"{name}.pt"
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: regenerate rather than fail the evaluation
        return None
    if payload.get("identity") != identity:
        return None
    return payload["adversarial"]


def save_transfer_set(folder: Path, name: str, identity: dict[str, Any], adversarial: torch.Tensor) -> None:
    """Keep attack ``name``'s transfer images for later evaluations (atomic: a crash leaves the old file or none)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"identity": identity, "adversarial": adversarial.detach().cpu().contiguous()},
                      folder / f"{name}.pt")
