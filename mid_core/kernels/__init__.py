"""Faster exact CPU paths for some ``torch.nn`` layers of the LeNet backbones, swapped in by ``use_cpu_kernels``.

The models in ``mid_core.models`` are plain ``torch.nn``. ``use_cpu_kernels(model)`` changes the class of each
eligible layer, in place, to a subclass whose ``forward`` takes a faster path on CPU tensors of the shapes it
supports and calls the ``torch.nn`` layer's own ``forward`` otherwise (CUDA, other shapes). The module objects,
their parameters, state-dict keys and hooks stay the same, so checkpoints, optimizers and
``torch.func.functional_call`` see no difference; only the arithmetic's order and speed change.

Kernels (names are the keys of ``KERNELS``):

``single_channel_conv``: ``nn.Conv2d`` with 1 input channel, stride 1, no padding (the LeNet conv1 on
    MNIST-like images) -> ``kernels.single_channel_conv.SingleChannelConv2d``. The forward is ``F.conv2d``; its
    input gradient is a Toeplitz-matrix GEMM (``transpose_as_matmul``), its weight gradient a convolution with
    the batch as channels, and these three maps are written as autograd Functions that are each other's
    derivatives, so the meta step's double backward of conv1 (the student's, and the teacher's in the
    cyclic-consistency path) stays in them instead of PyTorch's generic convolution double backward. Exact: the
    same sums in another order (float rounding only; ``gradcheck``/``gradgradcheck`` in float64).
``single_channel_conv_transpose``: ``nn.ConvTranspose2d`` with 1 output channel, stride 1, no padding (the
    decoder's last layer) -> ``kernels.single_channel_conv.SingleChannelConvTranspose2d``, the same three
    Functions entered through ``transpose``; the bias is added outside the kernel. Exact as above.
``max_pool_2x2``: ``nn.MaxPool2d(2)`` on 4-D maps of even size -> ``kernels.max_pool.MaxPool2x2``: the maxima as
    three elementwise ``torch.maximum`` of the four strided sub-grids (PyTorch's CPU ``max_pool2d`` runs far
    below memory speed on small planes), and under autograd PyTorch's own argmax indices (first maximum on ties)
    and backward kernel. Exact: equal values, and gradients bit for bit.

Measured in the MID meta step (second order, batch 128 x 5 views, Adam excluded), each kernel alone and all of
them against the plain model, medians of ``torch.utils.benchmark`` blocked_autorange, on a shared 2-core CPU
(noisy): ``python -m bench.kernels`` (plain / with the kernel; > 1 is faster):

    MEASURED_TABLE

Not kept: nearest 2x upsampling as four strided copies (1.00-1.08x in the meta step), and the stacked
PGD/MIM online attack (0.65x on CPU).
"""
from __future__ import annotations

from typing import Collection

from torch import nn

from mid_core.kernels.max_pool import MaxPool2x2
from mid_core.kernels.single_channel_conv import SingleChannelConv2d, SingleChannelConvTranspose2d

# name -> (the torch.nn layer it applies to, the subclass with the fast path)
KERNELS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "single_channel_conv": (nn.Conv2d, SingleChannelConv2d),
    "single_channel_conv_transpose": (nn.ConvTranspose2d, SingleChannelConvTranspose2d),
    "max_pool_2x2": (nn.MaxPool2d, MaxPool2x2),
}


def use_cpu_kernels(model: nn.Module, kernels: Collection[str] | None = None) -> nn.Module:
    """Swap every eligible layer of ``model`` in place for its fast CPU equivalent; returns ``model``.

    ``kernels``: names from ``KERNELS`` to use (default: all). A layer is eligible when its type is exactly the
    ``torch.nn`` class of a kernel and its settings are the ones the kernel supports; every other layer is left
    alone, and so are layers already swapped (calling this twice changes nothing). Parameters keep their values,
    names and identity, so ``model.state_dict()`` is unchanged and an optimizer built before keeps working.
    """
    names = list(KERNELS) if kernels is None else list(kernels)
    unknown = sorted(set(names) - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown CPU kernels {unknown}; choose from {sorted(KERNELS)}")
    swaps = [KERNELS[n] for n in names]
    for module in model.modules():
        for plain, fast in swaps:
            if type(module) is plain and fast.supports(module):  # type: ignore[attr-defined]
                module.__class__ = fast
                break
    return model


__all__ = ["KERNELS", "use_cpu_kernels"]
