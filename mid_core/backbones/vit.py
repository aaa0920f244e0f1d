"""Vision Transformers (torchvision's ``VisionTransformer``): ViT-S/16 for ImageNet-100 and ViT-B/16 for ImageNet-1K,
224x224 images. The encoder's output is the token sequence laid out ``(N, D, T)`` (embedding first, T = 1 + 196
tokens), so AC's softmax over dim 1 is over each token's embedding; the head classifies the class token. There is
no decoder, so MID uses AC + LC only, as the paper does for its ViTs. Second derivatives need the math attention
kernel (the fused ones have no double backward): ``mid_core.meta_step`` selects it.

Initial weights come from a local file (``load_torchvision_weights``: a torchvision ``vit_b_16`` / ViT-S state
dict, e.g. saved from ``torchvision.models.vit_b_16(weights="IMAGENET1K_V1").state_dict()`` on a machine with
network); nothing is downloaded at run time.
"""
from __future__ import annotations

import os
from functools import partial

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from mid_core.backbones import BackboneParts, register_backbone

VIT_S16 = {"num_layers": 12, "num_heads": 6, "hidden_dim": 384, "mlp_dim": 1536}
VIT_B16 = {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}
VIT_TINY = {"num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}


class ViTEncoder(nn.Module):
    """Patch embedding, class token and transformer encoder of torchvision's ViT (same parameter names, so its
    state dicts load). Images ``(N, C, 224, 224)`` -> tokens ``(N, D, 1 + (224 / 16) ** 2)``."""

    def __init__(self, in_channels: int, image_size: int = 224, patch_size: int = 16, **dims: int) -> None:
        super().__init__()
        vit = VisionTransformer(image_size=image_size, patch_size=patch_size, **dims)
        if in_channels != 3:
            vit.conv_proj = nn.Conv2d(in_channels, dims["hidden_dim"], kernel_size=patch_size, stride=patch_size)
        self.class_token, self.conv_proj, self.encoder = vit.class_token, vit.conv_proj, vit.encoder
        self.patch_size, self.image_size, self.hidden_dim = patch_size, image_size, dims["hidden_dim"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, got {h}x{w}")
        p = self.patch_size
        tokens = self.conv_proj(x).reshape(n, self.hidden_dim, (h // p) * (w // p)).permute(0, 2, 1)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)
        return self.encoder(tokens).transpose(1, 2)


class ViTHead(nn.Module):
    """Classifier head: the class token's embedding -> logits. Tokens ``(N, D, T)`` -> ``(N, K)``."""

    def __init__(self, hidden_dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z[:, :, 0])


def _vit(dims: dict[str, int], in_channels: int, num_classes: int) -> BackboneParts:
    return BackboneParts(
        make_encoder=lambda: ViTEncoder(in_channels, **dims),
        make_classifier=lambda: ViTHead(dims["hidden_dim"], num_classes),
        make_decoder=lambda: None,
        image_shape=(in_channels, 224, 224),
    )


def load_torchvision_weights(encoder: nn.Module, head: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load a torchvision ViT state dict (``class_token``, ``conv_proj.*``, ``encoder.*``, ``heads.head.*``) into
    our encoder and head; the head is kept as initialised when its shape differs (another class count: fine-tune).
    Returns the names not loaded. Raises ``FileNotFoundError`` with the command that makes such a file."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"ViT initial weights {path} not found; on a machine with network save them with: python -c \"import "
            f"torch, torchvision; torch.save(torchvision.models.vit_b_16(weights='IMAGENET1K_V1').state_dict(), "
            f"'{path}')\" (or point model.pretrained at your ViT-S/16 state dict)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    enc = {k: v for k, v in state.items() if not k.startswith("heads.")}
    missing, unexpected = encoder.load_state_dict(enc, strict=False)
    skipped = list(missing) + list(unexpected)
    head_state = {k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.head.")}
    if head_state and head_state["head.weight"].shape == head.head.weight.shape:
        head.load_state_dict(head_state)
    else:
        skipped.append("heads.head")
    return skipped


register_backbone("vit_s", image_size=224, paper_use="ImageNet-100 (Table 2)", has_decoder=False)(partial(_vit, VIT_S16))
register_backbone("vit_b", image_size=224, paper_use="ImageNet-1K (Table 2)", has_decoder=False)(partial(_vit, VIT_B16))
register_backbone("vit_tiny", image_size=224, paper_use="tests (2 layers, dim 32)", has_decoder=False)(
    partial(_vit, VIT_TINY))
