"""2x2 max-pooling as elementwise maxima of the four strided sub-grids, with PyTorch's indices and backward.

``max_pool_2x2(x)`` equals ``F.max_pool2d(x, 2)`` for ``x: (N, C, H, W)`` with even ``H`` and ``W``:

* without autograd it returns the maxima only (three ``torch.maximum`` of ``(N, C, H/2, W/2)`` views);
* with autograd it also computes ``max_pool2d_with_indices``'s flat argmax indices (the first maximum of each
  window in row-major order, as PyTorch picks among ties; MNIST backgrounds tie on every window), and its
  backward is PyTorch's own ``max_pool2d_with_indices_backward`` on them. The gradients are therefore those of
  ``nn.MaxPool2d`` bit for bit, and so are the derivatives of that backward (a gather), to any order;
* a window holding a NaN gives NaN, as PyTorch's; only the index picked inside such a window may differ.

Measured gains and the bench command: ``mid_core.kernels``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


def _quadrants(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four strided sub-grids of 2x2 windows in row-major window order: each ``(N, C, H/2, W/2)``."""
    n, c, h, w = x.shape
    v = x.view(n, c, h // 2, 2, w // 2, 2)
    return v[:, :, :, 0, :, 0], v[:, :, :, 0, :, 1], v[:, :, :, 1, :, 0], v[:, :, :, 1, :, 1]


@functools.lru_cache(maxsize=16)
def _window_origins(height: int, width: int) -> torch.Tensor:
    """Flat index of each window's top-left pixel in an ``(height, width)`` plane: ``(height/2, width/2)`` int64."""
    return torch.arange(0, height, 2).view(-1, 1) * width + torch.arange(0, width, 2)


def _window_max(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = _quadrants(x)
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


def _window_max_and_indices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maxima ``(N, C, H/2, W/2)`` and ``max_pool2d_with_indices``'s flat indices into each ``(H, W)`` plane."""
    best = _window_max(x)
    a, b, c, _ = _quadrants(x)
    width = x.shape[-1]
    # Offset of the first maximum in the window (0, 1, W, W + 1) as nested choices written as in-place arithmetic
    # on 0/1 masks: 0 if a is the maximum, else 1 if b is, else W if c is, else W + 1. In int32, converted once:
    # int64 arithmetic with a broadcast int64 operand is ~3x slower here.
    not_a, not_b, not_c = ((q != best).to(torch.int32) for q in (a, b, c))
    offset = not_c.add_(width - 1).mul_(not_b).add_(1).mul_(not_a)
    origins = _window_origins(x.shape[-2], width).to(x.device)
    return best, offset.long().add_(origins)


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        best, indices = _window_max_and_indices(x)
        ctx.save_for_backward(x, indices)
        return best

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` for ``x: (N, C, H, W)`` with even ``H``, ``W`` -> ``(N, C, H/2, W/2)``."""
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"max_pool_2x2 needs (N, C, H, W) maps with even H and W; got {tuple(x.shape)} "
                         "(use F.max_pool2d for other shapes)")
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool2x2.apply(x)
    return _window_max(x)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d`` running ``max_pool_2x2`` on 4-D floating CPU maps of even size when its settings are those
    of ``nn.MaxPool2d(2)``, else PyTorch's."""

    @staticmethod
    def supports(pool: nn.MaxPool2d) -> bool:
        """True for a 2x2 window, stride 2, no padding or dilation, no returned indices, floor mode."""
        return (_pair(pool.kernel_size) == (2, 2) and _pair(pool.stride) == (2, 2) and _pair(pool.padding) == (0, 0)
                and _pair(pool.dilation) == (1, 1) and not pool.return_indices and not pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point() and x.shape[-2] % 2 == 0
                and x.shape[-1] % 2 == 0 and self.supports(self)):
            return max_pool_2x2(x)
        return super().forward(x)
