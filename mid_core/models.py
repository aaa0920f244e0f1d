"""Backbones for MID: encoder E, classifier head C, decoder D, and the modules built from them.

Every model takes float images ``(N, C, H, W)`` in ``[0, 1]``; any normalisation lives inside the
model, so attacks and the store always work in pixel space.

* ``Teacher``: the autoencoder-classifier F_t = (E_t, C_t, D_t), trained on clean data with
  cross-entropy + reconstruction, then frozen.
* ``DeployedModel``: what MID ships, the student encoder E_s followed by the frozen teacher head C_t.
* ``StandardClassifier``: E followed by C, the plain baseline / substitute model.

Backbones are registered by name in ``BACKBONES`` so later ones (ResNet, WRN) plug in without touching
the training code.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class LeNetEncoder(nn.Module):
    """LeNet-5 style convolutional encoder.

    Maps ``(N, in_channels, 28, 28)`` images in [0, 1] to a feature map ``(N, widths[1], 4, 4)``.
    ``widths=(32, 64)`` is the variant of the official MID code; ``(6, 16)`` is the classic LeNet-5.

    Each block is conv -> max-pool -> ReLU: the same function as conv -> ReLU -> max-pool (max commutes with
    the monotone ReLU), with the ReLU on a 4x smaller map, which matters in the meta step's double backward.
    Plain ``torch.nn`` layers; parameter names (``features.0``, ``features.3``) are those of every checkpoint.
    ``mid_core.kernels.use_cpu_kernels`` swaps in faster exact CPU paths for some of them.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        c1, c2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class LeNetClassifier(nn.Module):
    """Classifier head C: feature map ``(N, c2, 4, 4)`` -> logits ``(N, num_classes)``."""

    def __init__(self, feature_channels: int = 64, hidden: tuple[int, ...] = (200,), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = feature_channels * 4 * 4
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class LeNetDecoder(nn.Module):
    """Decoder D, the mirror image of ``LeNetEncoder`` (paper Fig. 6: fully symmetric for LeNet-5).

    Maps ``(N, c2, 4, 4)`` back to ``(N, out_channels, 28, 28)`` in [0, 1]. The paper ends with tanh; we
    use a sigmoid (= tanh rescaled to [0, 1]) because our images live in [0, 1]. Plain ``torch.nn`` layers
    (parameters ``net.1``, ``net.4``); ``mid_core.kernels.use_cpu_kernels`` swaps in a faster exact CPU path for
    the last one.
    """

    def __init__(self, out_channels: int = 1, widths: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        c1, c2 = widths
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.ConvTranspose2d(c2, c1, kernel_size=5),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.ConvTranspose2d(c1, out_channels, kernel_size=5),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass(frozen=True)
class BackboneParts:
    """Factories for one backbone's encoder, classifier head and decoder."""

    make_encoder: Callable[[], nn.Module]
    make_classifier: Callable[[], nn.Module]
    make_decoder: Callable[[], nn.Module]
    image_shape: tuple[int, int, int]


def _lenet(widths: tuple[int, int], hidden: tuple[int, ...]) -> Callable[[int, int], BackboneParts]:
    def build(in_channels: int = 1, num_classes: int = 10) -> BackboneParts:
        return BackboneParts(
            make_encoder=lambda: LeNetEncoder(in_channels, widths),
            make_classifier=lambda: LeNetClassifier(widths[1], hidden, num_classes),
            make_decoder=lambda: LeNetDecoder(in_channels, widths),
            image_shape=(in_channels, 28, 28),
        )

    return build


BACKBONES: dict[str, Callable[[int, int], BackboneParts]] = {
    # 32/64-channel LeNet of the official MID code (~0.2 M encoder+head parameters).
    "lenet5": _lenet((32, 64), (200,)),
    # Classic LeNet-5 of LeCun et al. 1998 (6/16 channels, 120-84 head): ~10x cheaper.
    "lenet5_classic": _lenet((6, 16), (120, 84)),
    # A very small LeNet for unit tests.
    "lenet_tiny": _lenet((4, 8), (16,)),
}


def backbone_parts(name: str, in_channels: int = 1, num_classes: int = 10) -> BackboneParts:
    """Return the factories of a registered backbone; raises ``ValueError`` naming the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](in_channels, num_classes)


class Teacher(nn.Module):
    """F_t = (E_t, C_t, D_t). ``forward`` returns ``(logits (N, K), reconstruction (N, C, H, W))``."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier
        self.decoder = decoder

    @classmethod
    def from_backbone(cls, name: str, in_channels: int = 1, num_classes: int = 10) -> "Teacher":
        parts = backbone_parts(name, in_channels, num_classes)
        return cls(parts.make_encoder(), parts.make_classifier(), parts.make_decoder())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.classifier(z), self.decoder(z)

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
