"""DenseNet-121 (torchvision's blocks) with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool, so
32x32 images give ``(N, C, 4, 4)`` features after the three transitions."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.densenet import DenseNet

from mid_core.backbones import BackboneParts, register_backbone
from mid_core.backbones.decoders import PooledHead, conv_decoder


class DenseNetEncoder(nn.Module):
    """DenseNet features (dense blocks ``block_config``, growth rate ``growth``) with the CIFAR stem, then the final
    ReLU of torchvision's forward. Images ``(N, C, 32, 32)`` -> ``(N, out_channels, 4, 4)``."""

    def __init__(self, in_channels: int, growth: int = 32, block_config: tuple[int, ...] = (6, 12, 24, 16)) -> None:
        super().__init__()
        net = DenseNet(growth_rate=growth, block_config=block_config, num_init_features=2 * growth)
        net.features.conv0 = nn.Conv2d(in_channels, 2 * growth, kernel_size=3, stride=1, padding=1, bias=False)
        net.features.pool0 = nn.Identity()
        for m in net.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.features = net.features
        self.out_channels = net.classifier.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))


def _densenet(growth: int, block_config: tuple[int, ...], in_channels: int, num_classes: int) -> BackboneParts:
    out = DenseNetEncoder(in_channels, growth, block_config).out_channels
    return BackboneParts(
        make_encoder=lambda: DenseNetEncoder(in_channels, growth, block_config),
        make_classifier=lambda: PooledHead(out, num_classes),
        make_decoder=lambda: conv_decoder(out, 4, in_channels, 32),
        image_shape=(in_channels, 32, 32),
    )


register_backbone("densenet121", image_size=32, paper_use="CIFAR-100 (Table 2)")(
    partial(_densenet, 32, (6, 12, 24, 16)))
register_backbone("densenet121_tiny", image_size=32, paper_use="tests (growth rate 4)")(
    partial(_densenet, 4, (6, 12, 24, 16)))
