"""LeNet-5 backbones for 1x28x28 images (MNIST, Fashion-MNIST, digits; paper Tables 2-3)."""
from __future__ import annotations

import torch
from torch import nn

from mid_core.backbones import BackboneParts, register_backbone


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


def _lenet_parts(in_channels: int, num_classes: int, widths: tuple[int, int], hidden: tuple[int, ...]) -> BackboneParts:
    return BackboneParts(
        make_encoder=lambda: LeNetEncoder(in_channels, widths),
        make_classifier=lambda: LeNetClassifier(widths[1], hidden, num_classes),
        make_decoder=lambda: LeNetDecoder(in_channels, widths),
        image_shape=(in_channels, 28, 28),
    )


@register_backbone("lenet5", image_size=28, paper_use="MNIST, Fashion-MNIST (32/64-channel LeNet of the official code)")
def lenet5(in_channels: int = 1, num_classes: int = 10) -> BackboneParts:
    return _lenet_parts(in_channels, num_classes, (32, 64), (200,))


@register_backbone("lenet5_classic", image_size=28, paper_use="MNIST, Fashion-MNIST on a CPU (LeCun et al. 1998, 6/16)")
def lenet5_classic(in_channels: int = 1, num_classes: int = 10) -> BackboneParts:
    return _lenet_parts(in_channels, num_classes, (6, 16), (120, 84))


@register_backbone("lenet_tiny", image_size=28, paper_use="tests only")
def lenet_tiny(in_channels: int = 1, num_classes: int = 10) -> BackboneParts:
    return _lenet_parts(in_channels, num_classes, (4, 8), (16,))
