"""A faster CPU convolution for 1-channel images (MNIST, Fashion-MNIST), exact and differentiable to any order.

Why: profiling the second-order MID step (docs/benchmarks.md, benchmark 1) put most of its time in the first
convolution of the LeNet encoders, whose input has one channel. oneDNN computes that layer's *weight gradient*
~2.7x slower than the same numbers computed as a forward convolution with the batch as the channel dimension,
and PyTorch's double backward of a convolution goes through generic kernels that are slower still. The meta
step differentiates the student's conv1 twice and the teacher's conv1 (on the decoded image, for the cyclic
consistency loss) twice, so this layer decides the step's cost.

What: three autograd Functions that are each other's derivatives, so gradients of any order stay inside three
fast kernels (for a ``k x k`` kernel, stride 1, no padding, 1 input channel, C output channels):

    conv(x, w)      = conv2d(x, w)                      x: (N, 1, H, W),  w: (C, 1, k, k)  ->  (N, C, h, w)
    transpose(g, w) = conv_transpose2d(g, w)            g: (N, C, h, w)                    ->  (N, 1, H, W)
    weight_grad(x, g) = conv2d(x^T, g^T)^T              (batch as channels)                ->  (C, 1, k, k)

    d conv       : dx = transpose(g, w),   dw = weight_grad(x, g)
    d transpose  : dg = conv(u, w),        dw = weight_grad(u, g)
    d weight_grad: dx = transpose(g, v),   dg = conv(x, v)

``SingleChannelConvTranspose2d`` runs the decoder's last layer (C channels -> a 1-channel image) through the same
``transpose`` kernel, so its derivatives of every order stay in these kernels too.

The values are those of ``nn.Conv2d`` up to float rounding (tests/test_single_channel_conv.py checks first and
second derivatives with ``gradcheck``/``gradgradcheck`` in float64). Any other configuration (more input
channels, stride, padding, CUDA tensors, where cuDNN is fast) runs the ordinary ``nn.Conv2d`` path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        return F.conv_transpose2d(g, w)

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
    """``conv2d(x, weight, bias)`` for ``x: (N, 1, H, W)``, ``weight: (C, 1, k, k)``, stride 1, no padding."""
    if x.dim() != 4 or x.shape[1] != 1 or weight.shape[1] != 1:
        raise ValueError(f"single_channel_conv2d needs (N, 1, H, W) images and (C, 1, k, k) weights; "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    y = _Conv.apply(x, weight)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class SingleChannelConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state_dict keys) using ``single_channel_conv2d`` on CPU when it applies."""

    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        return (
            not x.is_cuda
            and self.in_channels == 1
            and self.groups == 1
            and self.stride == (1, 1)
            and self.padding == (0, 0)
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and x.dim() == 4
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_path_applies(x):
            return single_channel_conv2d(x, self.weight, self.bias)
        return super().forward(x)


def single_channel_conv_transpose2d(g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv_transpose2d(g, weight, bias)`` into a 1-channel image: ``g: (N, C, h, w)``, ``weight: (C, 1, k, k)``
    -> ``(N, 1, h + k - 1, w + k - 1)``, stride 1, no padding. The bias is added outside the kernel: oneDNN's
    transposed convolution with a bias measured ~2x slower than without one for this shape."""
    if g.dim() != 4 or weight.shape[1] != 1 or g.shape[1] != weight.shape[0]:
        raise ValueError(f"single_channel_conv_transpose2d needs (N, C, h, w) inputs and (C, 1, k, k) weights; "
                         f"got {tuple(g.shape)} and {tuple(weight.shape)}")
    y = _Transpose.apply(g, weight)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class SingleChannelConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same state_dict keys) using ``single_channel_conv_transpose2d`` on
    CPU when it applies (1 output channel, stride 1, no padding): the last layer of the LeNet decoder, which the
    meta step's cyclic-consistency path differentiates twice."""

    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        return (
            not x.is_cuda
            and self.out_channels == 1
            and self.groups == 1
            and self.stride == (1, 1)
            and self.padding == (0, 0)
            and self.output_padding == (0, 0)
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and x.dim() == 4
        )

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and self._fast_path_applies(x):
            return single_channel_conv_transpose2d(x, self.weight, self.bias)
        return super().forward(x, output_size)
