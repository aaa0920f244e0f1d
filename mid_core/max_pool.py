"""A faster CPU 2x2 max-pooling, exact and differentiable to any order.

Why: profiling the MID step and the LeNet forward pass (docs/benchmarks.md, benchmark 1) showed PyTorch's CPU
``max_pool2d`` on contiguous NCHW maps with small planes running far below memory speed: pooling a
``(1024, 6, 24, 24)`` map took ~13 ms at 2 threads, 30x a ReLU of the same map and a third of the LeNet
encoder's forward time. The same maxima computed as three elementwise ``torch.maximum`` of the four strided
sub-grids take ~2 ms.

What: ``max_pool_2x2(x)`` equals ``F.max_pool2d(x, 2)`` for ``x: (N, C, H, W)`` with even ``H`` and ``W``.

* Without autograd (evaluation, attacks' forward-only queries such as Square) it returns the maxima only.
* With autograd it also computes PyTorch's flat argmax indices (the first maximum in row-major order of each
  window, as ``max_pool2d_with_indices`` picks among ties: MNIST backgrounds tie on every window), and the
  backward is PyTorch's own ``max_pool2d_with_indices_backward`` with them. The gradients are therefore the
  native layer's, bit for bit, and its derivative (a gather) is PyTorch's too, so the meta step's double
  backward is unchanged.
* NaN: the output is NaN wherever a window holds one, as with PyTorch; only the index picked inside such a
  window may differ (PyTorch keeps the last NaN, this keeps the last position).

``MaxPool2x2`` is an ``nn.MaxPool2d(2)`` (same repr, no parameters) that uses this path on CPU when it applies
and the ordinary one otherwise (CUDA, odd sizes, other settings). tests/test_max_pool.py checks values,
indices, first and second derivatives against ``nn.MaxPool2d``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


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
    # Offset of the first maximum in the window (0, 1, W, W + 1), as nested choices written as in-place
    # arithmetic on 0/1 masks: 0 if a is the maximum, else 1 if b is, else W if c is, else W + 1. int32 then one
    # conversion: int64 arithmetic with a broadcast int64 operand measured ~3x slower here.
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
    """``F.max_pool2d(x, 2)`` for ``x: (N, C, H, W)`` with even ``H``, ``W`` -> ``(N, C, H/2, W/2)``; see the module doc."""
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"max_pool_2x2 needs (N, C, H, W) maps with even H and W; got {tuple(x.shape)} "
                         "(use F.max_pool2d for other shapes)")
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool2x2.apply(x)
    return _window_max(x)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` using ``max_pool_2x2`` on CPU when it applies (4-D float maps with even sizes)."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2)

    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        return (
            not x.is_cuda
            and x.dim() == 4
            and x.is_floating_point()
            and x.shape[-2] % 2 == 0
            and x.shape[-1] % 2 == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_path_applies(x):
            return max_pool_2x2(x)
        return F.max_pool2d(x, 2)
