"""ResNet-18 / ResNet-50 with the CIFAR stem (3x3 stride-1 first convolution, no max-pool), as the robustness
literature uses for 32x32 images; blocks are torchvision's. Encoder output ``(N, 8 * width * expansion, 4, 4)`` for
32x32 inputs."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from mid_core.backbones import BackboneParts, register_backbone
from mid_core.backbones.decoders import PooledHead, conv_decoder


class ResNetEncoder(ResNet):
    """torchvision's ResNet up to ``layer4`` with a CIFAR stem and base width ``width`` (64 = the standard model).
    Images ``(N, C, 32, 32)`` -> features ``(N, 8 * width * block.expansion, 4, 4)``."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], in_channels: int, width: int = 64
                 ) -> None:
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.out_channels = 8 * width * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # torchvision's blocks use in-place ReLU, which the meta step's functional calls avoid
            if isinstance(m, nn.ReLU):
                m.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int], width: int, in_channels: int,
            num_classes: int) -> BackboneParts:
    out = 8 * width * block.expansion
    return BackboneParts(
        make_encoder=lambda: ResNetEncoder(block, layers, in_channels, width),
        make_classifier=lambda: PooledHead(out, num_classes),
        make_decoder=lambda: conv_decoder(out, 4, in_channels, 32),
        image_shape=(in_channels, 32, 32),
    )


register_backbone("resnet18", image_size=32, paper_use="CIFAR-10 (Table 2)")(partial(_resnet, BasicBlock, [2, 2, 2, 2], 64))
register_backbone("resnet50", image_size=32, paper_use="SVHN (Table 2)")(partial(_resnet, Bottleneck, [3, 4, 6, 3], 64))
register_backbone("resnet18_tiny", image_size=32, paper_use="tests, CPU runs (width 8)")(
    partial(_resnet, BasicBlock, [2, 2, 2, 2], 8))
register_backbone("resnet50_tiny", image_size=32, paper_use="tests (width 4)")(
    partial(_resnet, Bottleneck, [3, 4, 6, 3], 4))
