"""Convolutions into and out of 1-channel images as three autograd Functions that are each other's derivatives.

For a ``k x k`` kernel, stride 1, no padding, 1 image channel, C feature channels:

    conv(x, w)        = conv2d(x, w)               x: (N, 1, H, W),  w: (C, 1, k, k)  ->  (N, C, h, w)
    transpose(g, w)   = conv_transpose2d(g, w)     g: (N, C, h, w)                    ->  (N, 1, H, W)
                        (computed by ``transpose_as_matmul``: one GEMM against Toeplitz matrices)
    weight_grad(x, g) = conv2d(x^T, g^T)^T         (the batch as channels)            ->  (C, 1, k, k)

    d conv       : dx = transpose(g, w),   dw = weight_grad(x, g)
    d transpose  : dg = conv(u, w),        dw = weight_grad(u, g)
    d weight_grad: dx = transpose(g, v),   dg = conv(x, v)

so derivatives of every order stay inside these three kernels instead of PyTorch's generic double backward of a
convolution. Each is a reordering of the same sums, so the values equal ``F.conv2d`` / ``F.conv_transpose2d`` up
to float rounding. Measured gains and the bench command: ``mid_core.kernels``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=32)
def _toeplitz_index(channels: int, width: int, kh: int, kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each weight goes in the Toeplitz matrix of ``transpose_as_matmul`` (flat positions, flat sources)."""
    out_width = width + kw - 1
    c, x, p, q = torch.meshgrid(
        torch.arange(channels), torch.arange(width), torch.arange(kh), torch.arange(kw), indexing="ij"
    )
    position = ((c * width + x) * kh + p) * out_width + x + q
    source = (c * kh + p) * kw + q
    return position.reshape(-1), source.reshape(-1)


def transpose_as_matmul(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``conv_transpose2d(g, w)`` into one channel, computed as one matrix product and a few shifted sums.

    ``g: (N, C, h, wd)``, ``w: (C, 1, kh, kw)`` -> ``(N, 1, h + kh - 1, wd + kw - 1)``.

    Each input row is split into ``B`` blocks of ``s`` columns (two halves when ``wd`` is even). A block's
    contribution to output row ``y + p`` is ``Σ_c g[:, c, y, block] @ T[c, p]``, where ``T[c, p]`` is the
    ``(s, s + kw - 1)`` Toeplitz matrix of the kernel row ``w[c, 0, p, :]``, the same for every block. So all rows
    and blocks go through one ``(N·h·B, C·s) @ (C·s, kh·(s + kw - 1))`` product, and ``kh·B`` shifted additions
    place the results. oneDNN runs this 1-output-channel transposed convolution far from the CPU's peak; the
    product runs at GEMM speed although it also multiplies the Toeplitz matrices' zeros (smaller blocks, fewer
    zeros).
    """
    n, channels, h, wd = g.shape
    kh, kw = w.shape[-2:]
    s = wd // 2 if wd % 2 == 0 else wd
    blocks, block_out = wd // s, s + kw - 1
    position, source = _toeplitz_index(channels, s, kh, kw)
    toeplitz = w.new_zeros(channels * s * kh * block_out)
    toeplitz[position.to(w.device)] = w.reshape(-1)[source.to(w.device)]
    rows = g.reshape(n, channels, h, blocks, s).permute(0, 2, 3, 1, 4).reshape(n * h * blocks, channels * s)
    rows = (rows @ toeplitz.view(channels * s, kh * block_out)).view(n, h, blocks, kh, block_out)
    out = g.new_zeros(n, 1, h + kh - 1, wd + kw - 1)
    for b in range(blocks):
        for p in range(kh):
            out[:, 0, p:p + h, b * s:b * s + block_out] += rows[:, :, b, p, :]
    return out


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        dx = _Transpose.apply(g, w) if ctx.needs_input_grad[0] else None
        dw = _WeightGrad.apply(x, g) if ctx.needs_input_grad[1] else None
        return dx, dw


class _Transpose(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(g, w)
        return transpose_as_matmul(g, w)

    @staticmethod
    def backward(ctx, u: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        g, w = ctx.saved_tensors
        dg = _Conv.apply(u, w) if ctx.needs_input_grad[0] else None
        dw = _WeightGrad.apply(u, g) if ctx.needs_input_grad[1] else None
        return dg, dw


class _WeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, g)
        return F.conv2d(x.transpose(0, 1), g.transpose(0, 1)).transpose(0, 1)

    @staticmethod
    def backward(ctx, v: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, g = ctx.saved_tensors
        dx = _Transpose.apply(g, v) if ctx.needs_input_grad[0] else None
        dg = _Conv.apply(x, v) if ctx.needs_input_grad[1] else None
        return dx, dg


def single_channel_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(x, weight, bias)`` for ``x: (N, 1, H, W)``, ``weight: (C, 1, k, k)``, stride 1, no padding
    -> ``(N, C, H - k + 1, W - k + 1)``."""
    if x.dim() != 4 or x.shape[1] != 1 or weight.shape[1] != 1:
        raise ValueError(f"single_channel_conv2d needs (N, 1, H, W) images and (C, 1, k, k) weights; "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    y = _Conv.apply(x, weight)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def single_channel_conv_transpose2d(g: torch.Tensor, weight: torch.Tensor,
                                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv_transpose2d(g, weight, bias)`` into a 1-channel image: ``g: (N, C, h, w)``, ``weight: (C, 1, k, k)``
    -> ``(N, 1, h + k - 1, w + k - 1)``, stride 1, no padding. The bias is added outside the kernel."""
    if g.dim() != 4 or weight.shape[1] != 1 or g.shape[1] != weight.shape[0]:
        raise ValueError(f"single_channel_conv_transpose2d needs (N, C, h, w) inputs and (C, 1, k, k) weights; "
                         f"got {tuple(g.shape)} and {tuple(weight.shape)}")
    y = _Transpose.apply(g, weight)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class SingleChannelConv2d(nn.Conv2d):
    """``nn.Conv2d`` running ``single_channel_conv2d`` on 4-D CPU inputs when its settings allow, else PyTorch's."""

    @staticmethod
    def supports(conv: nn.Conv2d) -> bool:
        """True for a 1-input-channel, stride-1, unpadded, undilated, ungrouped convolution."""
        return (conv.in_channels == 1 and conv.groups == 1 and conv.stride == (1, 1) and conv.padding == (0, 0)
                and conv.dilation == (1, 1) and conv.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and self.supports(self):
            return single_channel_conv2d(x, self.weight, self.bias)
        return super().forward(x)


class SingleChannelConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` running ``single_channel_conv_transpose2d`` on 4-D CPU inputs when its settings allow,
    else PyTorch's."""

    @staticmethod
    def supports(conv: nn.ConvTranspose2d) -> bool:
        """True for a 1-output-channel, stride-1, unpadded, undilated, ungrouped transposed convolution."""
        return (conv.out_channels == 1 and conv.groups == 1 and conv.stride == (1, 1) and conv.padding == (0, 0)
                and conv.output_padding == (0, 0) and conv.dilation == (1, 1) and conv.padding_mode == "zeros")

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and x.device.type == "cpu" and x.dim() == 4 and self.supports(self):
            return single_channel_conv_transpose2d(x, self.weight, self.bias)
        return super().forward(x, output_size)
