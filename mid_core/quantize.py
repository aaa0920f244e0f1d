"""8-bit quantisation of adversarial images.

A real attacker delivers valid 8-bit images, and the adversarial store keeps uint8. Plain rounding can push a
pixel that sits on the eps boundary one level outside the eps ball (e.g. eps = 0.3 is 76.5 levels), so for
L-inf attacks ``quantize_adversarial`` rounds and then clips, in the integer domain, to
``[c - r, c + r]`` with ``r = floor(eps * 255 + 1e-6)`` around the clean level ``c`` and to ``[0, 255]``.
As the clean images are themselves 8-bit, every stored pixel is then exactly within eps of the clean one.
"""
from __future__ import annotations

import math

import torch

_LEVELS = 255


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 by rounding to the nearest of the 256 levels."""
    if not images.is_floating_point():
        raise ValueError(f"to_uint8 expects float images, got {images.dtype}")
    if images.numel():
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"images must lie in [0, 1], got range [{lo}, {hi}]")
    return torch.round(images.clamp(0.0, 1.0) * _LEVELS).to(torch.uint8)


def from_uint8(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (level / 255)."""
    if images_u8.dtype != torch.uint8:
        raise ValueError(f"from_uint8 expects uint8 images, got {images_u8.dtype}")
    return images_u8.to(torch.float32) / _LEVELS


def linf_levels(eps: float) -> int:
    """The largest whole number of 8-bit levels inside an L-inf radius ``eps`` (``floor(eps*255 + 1e-6)``)."""
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return int(math.floor(eps * _LEVELS + 1e-6))


def quantize_adversarial(adversarial: torch.Tensor, clean: torch.Tensor, eps: float | None) -> torch.Tensor:
    """Adversarial float images -> uint8 ``(N, C, H, W)`` that stay in the eps ball of ``clean`` and in [0, 255].

    ``clean`` (float, or uint8 levels) must be 8-bit representable (multiples of 1/255). ``eps=None`` (CW, JSMA: no L-inf bound) is
    plain rounding.
    """
    if adversarial.shape != clean.shape:
        raise ValueError(f"adversarial {tuple(adversarial.shape)} and clean {tuple(clean.shape)} shapes differ")
    adv_u8 = to_uint8(adversarial)
    if eps is None:
        return adv_u8
    if clean.dtype == torch.uint8:
        c = clean.to(device=adv_u8.device, dtype=torch.int16)
    else:
        clean_levels = clean.to(device=adv_u8.device, dtype=torch.float64) * _LEVELS
        rounded = torch.round(clean_levels)
        if clean.numel() and float((clean_levels - rounded).abs().max()) > 1e-3:
            raise ValueError("clean images must be 8-bit representable (multiples of 1/255)")
        c = rounded.to(torch.int16)
    r = linf_levels(eps)
    out = torch.minimum(torch.maximum(adv_u8.to(torch.int16), c - r), c + r).clamp_(0, _LEVELS)
    return out.to(torch.uint8)
