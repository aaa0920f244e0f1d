"""Faster exact CPU paths for ``torch.nn`` layers of the LeNet backbones, swapped in by ``use_cpu_kernels``.

The models of ``mid_core.models`` are plain ``torch.nn``. ``use_cpu_kernels(model)`` changes, in place, the class
of each eligible layer to a subclass whose ``forward`` takes a faster path on CPU tensors of the shapes it supports
and calls the ``torch.nn`` layer's own ``forward`` otherwise (CUDA, other shapes, CPU autocast). The module
objects, their parameters, state-dict keys and hooks stay the same, so checkpoints, optimizers and
``torch.func.functional_call`` see no difference; only the order of the arithmetic and the speed change.

Kernels:

``SingleChannelConv2d`` for ``nn.Conv2d`` with 1 input channel, stride 1, no padding (conv1 of the LeNet encoder
    on MNIST-like images). The forward is ``F.conv2d``; its input gradient, ``conv_transpose2d`` into one channel,
    is one GEMM against Toeplitz matrices (``_transpose_as_matmul``: oneDNN runs that transposed convolution far
    below the CPU's peak), its weight gradient a convolution with the batch as channels. The three maps are
    autograd Functions that are each other's derivatives, so the meta step's double backward of conv1 (the
    student's, and the teacher's in the cyclic-consistency path) stays inside them instead of PyTorch's generic
    double backward of a convolution.
``SingleChannelConvTranspose2d`` for ``nn.ConvTranspose2d`` with 1 output channel, stride 1, no padding (the
    decoder's last layer): the same three Functions, entered through the transpose.
``MaxPool2x2`` for ``nn.MaxPool2d(2)`` on 4-D maps of even size: the maxima as three elementwise
    ``torch.maximum`` of the four strided sub-grids (PyTorch's CPU ``max_pool2d`` runs far below memory speed on
    small planes) and, under autograd, ``max_pool2d_with_indices``'s argmax indices (first maximum on ties) with
    PyTorch's own backward kernel on them.

Exactness: the convolutions compute the same sums in another order (float rounding only; ``gradcheck`` and
``gradgradcheck`` pass in float64); the max-pool gives equal values and gradients bit for bit (its backward is
PyTorch's, and that backward is a gather, so every higher derivative is PyTorch's too).

Measured in one MID meta step (second order, batch 128 x 5 views of random images, held-out PGD_N, optimizer step
excluded; 1 torch thread, medians of ``torch.utils.benchmark``, on a shared 2-core CPU, so a few percent are
noise), plain-model seconds / seconds with the kernel(s), > 1 is faster:

    python -m bench.kernels

    ============================  ========  ==============
    kernel(s)                     lenet5    lenet5_classic
    ============================  ========  ==============
    SingleChannelConv2d           1.11x     1.34x
    SingleChannelConvTranspose2d  1.04x     1.13x
    MaxPool2x2                    1.02x     1.08x
    all three                     1.18x     1.62x
    ============================  ========  ==============

Not kept: nearest 2x upsampling as four strided copies (1.00-1.08x in the meta step).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

# ------------------------------------------------------------------------------------------ 1-channel convolutions
#
# For a (kh, kw) kernel, stride 1, no padding, 1 image channel and C feature channels:
#
#     conv(x, w)        = conv2d(x, w)              x: (N, 1, H, W), w: (C, 1, kh, kw) -> (N, C, H-kh+1, W-kw+1)
#     transpose(g, w)   = conv_transpose2d(g, w)    g: (N, C, h, wd)                   -> (N, 1, h+kh-1, wd+kw-1)
#     weight_grad(x, g) = conv2d(x^T, g^T)^T        (the batch as channels)            -> (C, 1, kh, kw)
#
#     d conv       : dx = transpose(g, w),  dw = weight_grad(x, g)
#     d transpose  : dg = conv(u, w),       dw = weight_grad(u, g)
#     d weight_grad: dx = transpose(g, v),  dg = conv(x, v)


@functools.lru_cache(maxsize=32)
def _toeplitz_index(channels: int, width: int, kh: int, kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each weight goes in the Toeplitz matrix of ``_transpose_as_matmul``: (flat positions, flat sources)."""
    out_width = width + kw - 1
    c, x, p, q = torch.meshgrid(torch.arange(channels), torch.arange(width), torch.arange(kh), torch.arange(kw),
                                indexing="ij")
    position = ((c * width + x) * kh + p) * out_width + x + q
    source = (c * kh + p) * kw + q
    return position.reshape(-1), source.reshape(-1)


def _transpose_as_matmul(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``conv_transpose2d(g, w)`` into one channel as one matrix product and a few shifted sums.

    ``g: (N, C, h, wd)``, ``w: (C, 1, kh, kw)`` -> ``(N, 1, h + kh - 1, wd + kw - 1)``.

    Each input row is split into ``B`` blocks of ``s`` columns (two halves when ``wd`` is even). A block's
    contribution to output row ``y + p`` is ``sum_c g[:, c, y, block] @ T[c, p]``, where ``T[c, p]`` is the
    ``(s, s + kw - 1)`` Toeplitz matrix of the kernel row ``w[c, 0, p, :]``, the same for every block. So all rows
    and blocks go through one ``(N*h*B, C*s) @ (C*s, kh*(s + kw - 1))`` product, at GEMM speed although it also
    multiplies the Toeplitz matrices' zeros (smaller blocks: fewer zeros), and ``kh*B`` shifted additions place
    the results.
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
        return _transpose_as_matmul(g, w)

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


def _plain_cpu_float(x: torch.Tensor) -> bool:
    """A 4-D floating CPU tensor outside CPU autocast (the Functions above do not cast their operands)."""
    return x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point() and not torch.is_autocast_enabled("cpu")


class SingleChannelConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the Functions above on ``(N, 1, H, W)`` CPU images -> ``(N, C, H - kh + 1, W - kw + 1)``."""

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """True for a 1-input-channel, stride-1, unpadded, undilated, ungrouped ``nn.Conv2d``."""
        return (isinstance(conv, nn.Conv2d) and conv.in_channels == 1 and conv.groups == 1 and conv.stride == (1, 1)
                and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_plain_cpu_float(x) and self.supports(self)):
            return super().forward(x)
        y = _Conv.apply(x, self.weight)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class SingleChannelConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with the Functions above into 1 channel on CPU: ``(N, C, h, w)`` ->
    ``(N, 1, h + kh - 1, w + kw - 1)``; the bias is added outside the kernel."""

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """True for a 1-output-channel, stride-1, unpadded, undilated, ungrouped ``nn.ConvTranspose2d``."""
        return (isinstance(conv, nn.ConvTranspose2d) and conv.out_channels == 1 and conv.groups == 1
                and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.output_padding == (0, 0)
                and conv.dilation == (1, 1) and conv.padding_mode == "zeros")

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not (output_size is None and _plain_cpu_float(x) and self.supports(self)):
            return super().forward(x, output_size)
        y = _Transpose.apply(x, self.weight)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


# ------------------------------------------------------------------------------------------ 2x2 max-pooling


def _quadrants(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four strided sub-grids of the 2x2 windows of ``x: (N, C, H, W)``, in row-major window order:
    each ``(N, C, H/2, W/2)``."""
    n, c, h, w = x.shape
    v = x.view(n, c, h // 2, 2, w // 2, 2)  # splitting dimensions is a view for any strides
    return v[:, :, :, 0, :, 0], v[:, :, :, 0, :, 1], v[:, :, :, 1, :, 0], v[:, :, :, 1, :, 1]


@functools.lru_cache(maxsize=16)
def _window_origins(height: int, width: int) -> torch.Tensor:
    """Flat index of each window's top-left pixel in an ``(height, width)`` plane: ``(height/2, width/2)`` int64."""
    return torch.arange(0, height, 2).view(-1, 1) * width + torch.arange(0, width, 2)


def _window_max(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> the window maxima ``(N, C, H/2, W/2)``; NaN wherever a window holds one."""
    a, b, c, d = _quadrants(x)
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


def _window_max_and_indices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maxima ``(N, C, H/2, W/2)`` and ``max_pool2d_with_indices``'s flat indices into each ``(H, W)`` plane."""
    best = _window_max(x)
    a, b, c, _ = _quadrants(x)
    width = x.shape[-1]
    # Offset of the first maximum in the window (0, 1, W, W + 1), nested choices written as in-place arithmetic on
    # 0/1 masks: 0 if a is the maximum, else 1 if b is, else W if c is, else W + 1. In int32, converted once: int64
    # arithmetic with a broadcast int64 operand is ~3x slower here.
    not_a, not_b, not_c = ((q != best).to(torch.int32) for q in (a, b, c))
    offset = not_c.add_(width - 1).mul_(not_b).add_(1).mul_(not_a)
    return best, offset.long().add_(_window_origins(x.shape[-2], width).to(x.device))


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


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` as elementwise maxima on CPU maps ``(N, C, H, W)`` of even ``H``, ``W`` ->
    ``(N, C, H/2, W/2)``; PyTorch's indices and backward under autograd."""

    @staticmethod
    def supports(pool: nn.Module) -> bool:
        """True for a 2x2 window, stride 2, no padding or dilation, no returned indices, floor mode."""
        return (isinstance(pool, nn.MaxPool2d) and _pair(pool.kernel_size) == (2, 2) and _pair(pool.stride) == (2, 2)
                and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1) and not pool.return_indices
                and not pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point() and x.shape[-2] % 2 == 0
                and x.shape[-1] % 2 == 0 and self.supports(self)):
            return super().forward(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool2x2.apply(x)
        return _window_max(x)


# ------------------------------------------------------------------------------------------ the entry point

# the torch.nn class each fast layer replaces
_FAST_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: SingleChannelConv2d,
    nn.ConvTranspose2d: SingleChannelConvTranspose2d,
    nn.MaxPool2d: MaxPool2x2,
}


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Swap every eligible layer of ``model`` in place for its fast CPU equivalent; returns ``model``.

    A layer is eligible when its type is exactly one of ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.MaxPool2d``
    and its settings are those its kernel supports; every other layer is left alone, and so are layers already
    swapped (a second call changes nothing). Parameters keep their values, names and identity, so
    ``model.state_dict()`` is unchanged and an optimizer built before keeps working. Call it on models that run on
    CPU; on other devices the swapped layers run ``torch.nn``'s forward.
    """
    for module in model.modules():
        fast = _FAST_LAYERS.get(type(module))
        if fast is not None and fast.supports(module):  # type: ignore[attr-defined]
            module.__class__ = fast
    return model


__all__ = ["MaxPool2x2", "SingleChannelConv2d", "SingleChannelConvTranspose2d", "use_cpu_kernels"]
