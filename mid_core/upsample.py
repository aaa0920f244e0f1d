"""A faster CPU nearest-neighbour 2x upsampling, exact and differentiable to any order.

Why: the teacher decoder (two ``nn.Upsample(scale_factor=2, mode="nearest")``) runs only in MID's cyclic-consistency
path, forward, backward and double backward, and PyTorch's CPU kernel is slow for these shapes: 6.6 ms to upsample
``(1024, 6, 12, 12)`` at 2 threads, where writing the same values as four strided copies takes 1.7 ms.

What: two autograd Functions that are each other's derivatives (both maps are linear), for ``x: (N, C, H, W)``:

    upsample(x)  = x repeated 2x along H and W      (N, C, H, W)   -> (N, C, 2H, 2W)   (= F.interpolate nearest x2)
    block_sum(g) = sum of each 2x2 block of g        (N, C, 2H, 2W) -> (N, C, H, W)    (= its backward)

so gradients of every order stay in these two kernels. Values equal ``F.interpolate(x, scale_factor=2,
mode="nearest")`` exactly; the gradients equal PyTorch's up to the order of the four-term sums (~1e-7 relative).
``Upsample2x`` is an ``nn.Upsample(scale_factor=2, mode="nearest")`` that uses them on CPU for 4-D inputs and
PyTorch's kernel otherwise. tests/test_upsample.py checks values, gradcheck and gradgradcheck.
"""
from __future__ import annotations

import torch
from torch import nn


def _replicate(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    out = x.new_empty(n, c, 2 * h, 2 * w)
    blocks = out.view(n, c, h, 2, w, 2)
    for i in (0, 1):
        for j in (0, 1):
            blocks[:, :, :, i, :, j] = x
    return out


def _sum_blocks(g: torch.Tensor) -> torch.Tensor:
    n, c, hh, ww = g.shape
    v = g.view(n, c, hh // 2, 2, ww // 2, 2)
    return (v[:, :, :, 0, :, 0] + v[:, :, :, 0, :, 1]) + (v[:, :, :, 1, :, 0] + v[:, :, :, 1, :, 1])


class _Upsample2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _replicate(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _BlockSum2x.apply(g)


class _BlockSum2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _sum_blocks(g)

    @staticmethod
    def backward(ctx, u: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _Upsample2x.apply(u)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="nearest")`` for ``x: (N, C, H, W)`` -> ``(N, C, 2H, 2W)``."""
    if x.dim() != 4:
        raise ValueError(f"upsample_nearest_2x needs (N, C, H, W) maps; got {tuple(x.shape)}")
    return _Upsample2x.apply(x)


class Upsample2x(nn.Upsample):
    """``nn.Upsample(scale_factor=2, mode="nearest")`` using ``upsample_nearest_2x`` on CPU for 4-D inputs."""

    def __init__(self) -> None:
        super().__init__(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda and x.dim() == 4:
            return upsample_nearest_2x(x)
        return super().forward(x)
