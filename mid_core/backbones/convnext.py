"""ConvNeXt-B (torchvision's blocks) for 64x64 Tiny-ImageNet images: the 4x4 patchify stem and three 2x
downsamplings give ``(N, 8 * width, 2, 2)`` features; the head is torchvision's (LayerNorm, linear) after pooling.
Stochastic depth is off: a random layer drop would differ between the meta-train and meta-test passes."""
from __future__ import annotations

from functools import partial

from torchvision.models.convnext import CNBlockConfig, ConvNeXt, LayerNorm2d
from torch import nn

from mid_core.backbones import BackboneParts, register_backbone
from mid_core.backbones.decoders import PooledHead, conv_decoder

DEPTHS = (3, 3, 27, 3)  # ConvNeXt-B


class ConvNeXtEncoder(nn.Module):
    """torchvision ConvNeXt features with stage widths ``width * (1, 2, 4, 8)`` (128 = ConvNeXt-B).
    Images ``(N, C, 64, 64)`` -> ``(N, 8 * width, 2, 2)``."""

    def __init__(self, in_channels: int, width: int = 128, depths: tuple[int, ...] = DEPTHS) -> None:
        super().__init__()
        widths = [width * 2 ** i for i in range(4)]
        setting = [CNBlockConfig(w, widths[i + 1] if i < 3 else None, d) for i, (w, d) in enumerate(zip(widths, depths))]
        net = ConvNeXt(setting, stochastic_depth_prob=0.0)
        net.features[0][0] = nn.Conv2d(in_channels, width, kernel_size=4, stride=4)
        self.features = net.features
        self.out_channels = widths[-1]

    def forward(self, x):
        return self.features(x)


def _convnext(width: int, in_channels: int, num_classes: int) -> BackboneParts:
    out = 8 * width
    return BackboneParts(
        make_encoder=lambda: ConvNeXtEncoder(in_channels, width),
        make_classifier=lambda: PooledHead(out, num_classes, norm=LayerNorm2d(out, eps=1e-6)),
        make_decoder=lambda: conv_decoder(out, 2, in_channels, 64),
        image_shape=(in_channels, 64, 64),
    )


register_backbone("convnext_b", image_size=64, paper_use="Tiny-ImageNet (Table 2)")(partial(_convnext, 128))
register_backbone("convnext_b_tiny", image_size=64, paper_use="tests (width 8)")(partial(_convnext, 8))
