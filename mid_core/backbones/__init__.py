"""The backbone registry: a backbone is one module of this package plus one ``@register_backbone`` line.

A backbone gives MID three parts (paper Sec. 4.1, Fig. 6): an encoder E (images ``(N, C, H, W)`` in [0, 1] -> a
feature map ``(N, c, h, w)``, or for a ViT the tokens laid out ``(N, D, T)`` so that the losses' softmax over dim 1
is over the embedding of each token), a classifier head C (features -> logits ``(N, K)``) and a decoder D (features
-> images in [0, 1], ``None`` for backbones without one: then MID uses AC + LC only).

Adding one (as timm's ``_registry.py``)::

    # mid_core/backbones/my_net.py
    @register_backbone("my_net", image_size=32, paper_use="CIFAR-10 (Table 2)")
    def my_net(in_channels: int, num_classes: int) -> BackboneParts:
        return BackboneParts(make_encoder=..., make_classifier=..., make_decoder=..., image_shape=(in_channels, 32, 32))

and import the module at the bottom of this file. Small-width variants (``<name>_tiny``) share the full model's
code and exist for tests and CPU smoke runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn


@dataclass(frozen=True)
class BackboneParts:
    """Factories for one backbone's encoder, classifier head and decoder (``make_decoder`` returns ``None`` when the
    backbone has no decoder), and the image shape ``(C, H, W)`` it takes."""

    make_encoder: Callable[[], nn.Module]
    make_classifier: Callable[[], nn.Module]
    make_decoder: Callable[[], Optional[nn.Module]]
    image_shape: tuple[int, int, int]


@dataclass(frozen=True)
class BackboneInfo:
    """A registered backbone: its factory ``(in_channels, num_classes) -> BackboneParts``, image size and use."""

    build: Callable[[int, int], BackboneParts]
    image_size: int
    paper_use: str
    has_decoder: bool = True


BACKBONES: dict[str, BackboneInfo] = {}


def register_backbone(name: str, *, image_size: int, paper_use: str, has_decoder: bool = True
                      ) -> Callable[[Callable[[int, int], BackboneParts]], Callable[[int, int], BackboneParts]]:
    """Register ``build(in_channels, num_classes) -> BackboneParts`` under ``name``."""
    def decorate(build: Callable[[int, int], BackboneParts]) -> Callable[[int, int], BackboneParts]:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = BackboneInfo(build, image_size, paper_use, has_decoder)
        return build
    return decorate


def backbone_parts(name: str, in_channels: int = 1, num_classes: int = 10) -> BackboneParts:
    """The factories of a registered backbone; raises ``ValueError`` naming the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name].build(in_channels, num_classes)


from mid_core.backbones import convnext, densenet, lenet, resnet, vit  # noqa: E402,F401  (registrations)

__all__ = ["BACKBONES", "BackboneInfo", "BackboneParts", "backbone_parts", "register_backbone"]
