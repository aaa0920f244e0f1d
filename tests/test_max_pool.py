"""MaxPool2x2: the same values, indices and derivatives (any order) as PyTorch's 2x2 max-pooling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mid_core.max_pool import MaxPool2x2, _window_max_and_indices, max_pool_2x2


def _tied_maps(shape: tuple[int, ...] = (3, 4, 8, 6), seed: int = 0) -> torch.Tensor:
    """Random maps with the ties MNIST produces: constant regions (every window tied) and repeated maxima."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[:, :, :2] = 0.25  # whole windows tied
    x[:, :, 4, ::3] = 3.0  # ties between a window's top-left and other positions
    x[:, :, 5, 1::2] = 3.0
    return x


def test_values_and_indices_equal_max_pool2d_with_indices_including_ties() -> None:
    x = _tied_maps()
    want, want_idx = F.max_pool2d_with_indices(x, 2)
    got, got_idx = _window_max_and_indices(x)
    assert torch.equal(got, want)
    assert torch.equal(got_idx, want_idx)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gradient_equals_nn_max_pool2d_on_tied_windows(memory_format: torch.memory_format) -> None:
    """Ties send the whole gradient to the first maximum, as PyTorch does (not split, not duplicated)."""
    x = _tied_maps().contiguous(memory_format=memory_format).requires_grad_()
    upstream = torch.randn(3, 4, 4, 3)
    (ours,) = torch.autograd.grad(MaxPool2x2()(x), x, upstream)
    (theirs,) = torch.autograd.grad(nn.MaxPool2d(2)(x), x, upstream)
    assert torch.equal(ours, theirs)
    assert (ours != 0).sum() == upstream.numel()  # exactly one pixel per window receives its gradient


def test_first_and_second_derivatives_pass_gradcheck() -> None:
    # distinct values: finite differences are undefined at ties
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(max_pool_2x2, (x,))
    assert torch.autograd.gradgradcheck(max_pool_2x2, (x,))


def test_double_backward_through_a_conv_net_equals_nn_max_pool2d(input_grad_norm_weight_grad) -> None:
    """The meta step's case: the gradient (w.r.t. the weights) of an input-gradient norm."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    x = torch.rand(5, 1, 10, 10, requires_grad=True)
    ours, theirs = (input_grad_norm_weight_grad(lambda t: pool(conv(t)).relu(), x, conv.weight)
                    for pool in (MaxPool2x2(), nn.MaxPool2d(2)))
    torch.testing.assert_close(ours, theirs)


def test_without_autograd_returns_the_maxima_and_no_graph() -> None:
    x = _tied_maps().requires_grad_()
    with torch.no_grad():
        y = max_pool_2x2(x)
    assert not y.requires_grad
    assert torch.equal(y, F.max_pool2d(x.detach(), 2))


def test_nan_windows_stay_nan() -> None:
    x = _tied_maps()
    x[0, 0, 0, 1] = float("nan")
    y = max_pool_2x2(x)
    assert torch.isnan(y[0, 0, 0, 0])
    assert torch.equal(torch.isnan(y), torch.isnan(F.max_pool2d(x, 2)))


def test_module_falls_back_to_pytorch_for_odd_sizes() -> None:
    x = torch.randn(2, 3, 7, 9)
    assert torch.equal(MaxPool2x2()(x), F.max_pool2d(x, 2))


def test_function_refuses_odd_sizes_naming_the_alternative() -> None:
    with pytest.raises(ValueError, match="even H and W.*F.max_pool2d"):
        max_pool_2x2(torch.randn(2, 3, 7, 8))
