"""The decoder D of the convolutional backbones (paper Fig. 6): transposed convolutions that double the resolution,
each followed by BatchNorm and ReLU except the output layer, which is bounded to [0, 1] by a sigmoid."""
from __future__ import annotations

import math

from torch import nn


def conv_decoder(feature_channels: int, feature_size: int, out_channels: int, image_size: int,
                 min_channels: int = 16, max_channels: int = 256) -> nn.Sequential:
    """Map features ``(N, feature_channels, feature_size, feature_size)`` to images ``(N, out_channels, image_size,
    image_size)`` in [0, 1]; ``image_size / feature_size`` must be a power of two (one 4x4 stride-2 transposed
    convolution per doubling, halving the channels each time, within ``[min_channels, max_channels]``)."""
    ratio = image_size // feature_size
    if ratio < 1 or ratio * feature_size != image_size or ratio & (ratio - 1):
        raise ValueError(f"cannot decode {feature_size}x{feature_size} features to {image_size}x{image_size} images: "
                         "the ratio must be a power of two")
    layers: list[nn.Module] = []
    channels = feature_channels
    for _ in range(int(math.log2(ratio)) - 1 if ratio > 1 else 0):
        nxt = min(max_channels, max(min_channels, channels // 2))
        layers += [nn.ConvTranspose2d(channels, nxt, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(nxt),
                   nn.ReLU(inplace=False)]
        channels = nxt
    if ratio > 1:
        layers.append(nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1))
    else:
        layers.append(nn.ConvTranspose2d(channels, out_channels, 3, padding=1))
    layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


class PooledHead(nn.Module):
    """Classifier head C of the convolutional backbones: global average pool, then a linear layer.
    Features ``(N, c, h, w)`` -> logits ``(N, K)``."""

    def __init__(self, channels: int, num_classes: int, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = norm if norm is not None else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, z):
        return self.fc(self.norm(self.pool(z)).flatten(1))
