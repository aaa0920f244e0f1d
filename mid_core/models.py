"""Backbones for MID: encoder E, classifier head C, decoder D, and the modules built from them.

Every model takes float images ``(N, C, H, W)`` in ``[0, 1]``; any normalisation lives inside the
model, so attacks and the store always work in pixel space.

* ``Teacher``: the autoencoder-classifier F_t = (E_t, C_t, D_t), trained on clean data with
  cross-entropy + reconstruction, then frozen.
* ``DeployedModel``: what MID ships, the student encoder E_s followed by the frozen teacher head C_t.
* ``StandardClassifier``: E followed by C, the plain baseline / substitute model.

Backbones (encoder, head, decoder factories) are registered by name in ``mid_core.backbones``.
"""
from __future__ import annotations

import copy
import torch
from torch import nn


from mid_core.backbones import BACKBONES, BackboneParts, backbone_parts  # noqa: F401  (re-exported)
from mid_core.backbones.lenet import LeNetClassifier, LeNetDecoder, LeNetEncoder  # noqa: F401  (re-exported)


class Teacher(nn.Module):
    """F_t = (E_t, C_t, D_t). ``forward`` returns ``(logits (N, K), reconstruction (N, C, H, W))``; the reconstruction
    is ``None`` for a backbone without a decoder (ViTs)."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module, decoder: nn.Module | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier
        self.decoder = decoder

    @classmethod
    def from_backbone(cls, name: str, in_channels: int = 1, num_classes: int = 10) -> "Teacher":
        parts = backbone_parts(name, in_channels, num_classes)
        return cls(parts.make_encoder(), parts.make_classifier(), parts.make_decoder())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.encoder(x)
        return self.classifier(z), (self.decoder(z) if self.decoder is not None else None)

    def freeze(self) -> "Teacher":
        """Put the teacher in eval mode and stop gradients to its parameters (inputs still get them)."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


class StandardClassifier(nn.Module):
    """E followed by C: the undefended baseline and the black-box substitute. Logits ``(N, K)``."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier

    @classmethod
    def from_backbone(cls, name: str, in_channels: int = 1, num_classes: int = 10) -> "StandardClassifier":
        parts = backbone_parts(name, in_channels, num_classes)
        return cls(parts.make_encoder(), parts.make_classifier())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))


class DeployedModel(StandardClassifier):
    """MID's deployed model: student encoder E_s then the frozen teacher head C_t. Logits ``(N, K)``.

    Gradients flow end to end (no gradient stopping), so white-box attacks see the true model.
    """


def classifier_of(teacher: Teacher) -> StandardClassifier:
    """The teacher as a plain classifier (E_t then C_t), sharing its modules."""
    return StandardClassifier(teacher.encoder, teacher.classifier)


def student_from_teacher(teacher: Teacher, init: str = "teacher") -> nn.Module:
    """A student encoder of the teacher's architecture: a deep copy of E_t or a fresh random init."""
    student = copy.deepcopy(teacher.encoder)
    if init == "random":
        for m in student.modules():
            if hasattr(m, "reset_parameters") and m is not student:
                m.reset_parameters()
    elif init != "teacher":
        raise ValueError(f"unknown student init {init!r}; use 'teacher' or 'random'")
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    return student


def classifier_student_from_teacher(teacher: Teacher, init: str = "teacher") -> StandardClassifier:
    """A whole trainable classifier (E then C) of the teacher's architecture, for training without distillation
    (Table 8 "no DST" rows, ERM): copies of E_t and C_t, or a fresh random init of both."""
    encoder = student_from_teacher(teacher, init)
    head = copy.deepcopy(teacher.classifier)
    if init == "random":
        for m in head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    for p in head.parameters():
        p.requires_grad_(True)
    return StandardClassifier(encoder, head).train()
