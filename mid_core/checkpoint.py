"""Weights-only checkpoints that carry their config, and ``load_robust_model``.

A checkpoint is a plain dict of tensors and JSON-like values, so it loads with
``torch.load(weights_only=True)``; a file with arbitrary pickled objects is refused by that loader.

Layout::

    {"format": "mid-checkpoint", "version": 1, "kind": "teacher" | "standard" | "deployed",
     "backbone": str, "in_channels": int, "num_classes": int,
     "state_dict": {name: tensor}, "config": {...}, "metrics": {...}}
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mid_core.models import DeployedModel, StandardClassifier, Teacher, backbone_parts

FORMAT = "mid-checkpoint"
VERSION = 1
KINDS = ("teacher", "standard", "deployed")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    kind: str,
    backbone: str,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
) -> Path:
    """Atomically write ``model``'s weights with its config (written to a temp file, then renamed)."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; use one of {KINDS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "backbone": backbone,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` and check its format."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; train it first (jobs/train_teacher.py, jobs/train_mid.py)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError for non-weights content
        raise CheckpointError(
            f"refusing to load {path}: it is not a weights-only checkpoint ({type(exc).__name__}: {str(exc)[:200]}). "
            "Only checkpoints written by mid_core.save_checkpoint (tensors and plain values) are accepted."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a MID checkpoint (missing format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this code reads version {VERSION}")
    return payload


def _load_state(model: nn.Module, payload: Mapping[str, Any], path: Path) -> nn.Module:
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: architecture mismatch: the checkpoint holds backbone {payload['backbone']!r} "
            f"({payload['in_channels']} channels, {payload['num_classes']} classes) but it does not fit the model built "
            f"for it: {str(exc).splitlines()[0]}"
        ) from None
    return model


def load_teacher(path: str | os.PathLike) -> Teacher:
    """The teacher (E_t, C_t, D_t) from a ``kind='teacher'`` checkpoint, frozen."""
    payload = read_checkpoint(path)
    if payload["kind"] != "teacher":
        raise CheckpointError(f"{path} holds a {payload['kind']!r} model, expected a teacher")
    teacher = Teacher.from_backbone(payload["backbone"], payload["in_channels"], payload["num_classes"])
    return _load_state(teacher, payload, Path(path)).freeze()


def load_classifier(path: str | os.PathLike) -> StandardClassifier:
    """Any checkpoint as an images -> logits classifier (teacher: E_t then C_t; deployed: E_s then C_t), eval mode."""
    payload = read_checkpoint(path)
    parts = backbone_parts(payload["backbone"], payload["in_channels"], payload["num_classes"])
    if payload["kind"] == "teacher":
        teacher = _load_state(Teacher(parts.make_encoder(), parts.make_classifier(), parts.make_decoder()), payload, Path(path))
        model: StandardClassifier = StandardClassifier(teacher.encoder, teacher.classifier)
    elif payload["kind"] == "deployed":
        model = _load_state(DeployedModel(parts.make_encoder(), parts.make_classifier()), payload, Path(path))
    else:
        model = _load_state(StandardClassifier(parts.make_encoder(), parts.make_classifier()), payload, Path(path))
    return model.eval()


def load_robust_model(path: str | os.PathLike) -> nn.Module:
    """A model of the zoo (``models/``) or of a run, ready to attack: MID's deployed model (student encoder then
    teacher head), an AT / standard classifier, or an undefended teacher (E_t then C_t), in eval mode with frozen
    parameters.

    The module maps float images ``(N, C, H, W)`` in [0, 1] to logits ``(N, num_classes)``; gradients flow end to end
    to the input, so any attack code can evaluate it white-box. Loaded with ``weights_only=True``; the checkpoint's
    ``kind``, config and metrics are in ``read_checkpoint(path)``.
    """
    model = load_classifier(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
