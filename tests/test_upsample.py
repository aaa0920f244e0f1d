"""Upsample2x: the values of PyTorch's nearest 2x upsampling, and exact derivatives of every order."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mid_core.upsample import Upsample2x, upsample_nearest_2x


def test_values_equal_nearest_interpolation() -> None:
    x = torch.randn(3, 4, 5, 6)
    assert torch.equal(Upsample2x()(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_first_and_second_derivatives_pass_gradcheck() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(upsample_nearest_2x, (x,))
    assert torch.autograd.gradgradcheck(upsample_nearest_2x, (x,))


def test_double_backward_through_a_decoder_matches_nn_upsample(input_grad_norm_weight_grad) -> None:
    """The meta step's case: the gradient (w.r.t. the weights) of an input-gradient norm through upsample + conv."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 1, 3)
    z = torch.rand(5, 4, 3, 3, requires_grad=True)
    ours, theirs = (input_grad_norm_weight_grad(lambda t: torch.sigmoid(conv(up(t))), z, conv.weight)
                    for up in (Upsample2x(), nn.Upsample(scale_factor=2, mode="nearest")))
    torch.testing.assert_close(ours, theirs)


def test_module_keeps_nn_upsample_settings_and_refuses_other_ranks() -> None:
    up = Upsample2x()
    assert isinstance(up, nn.Upsample) and up.scale_factor == 2 and up.mode == "nearest"
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        upsample_nearest_2x(torch.randn(3, 4, 5))
