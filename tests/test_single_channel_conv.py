"""The fast 1-channel convolution equals nn.Conv2d in value, gradient and second derivative."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mid_core.models import LeNetDecoder, LeNetEncoder
from mid_core.single_channel_conv import (
    SingleChannelConv2d,
    SingleChannelConvTranspose2d,
    single_channel_conv2d,
    single_channel_conv_transpose2d,
    transpose_as_matmul,
)


def _inputs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 9, 8, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=dtype, requires_grad=True)
    return x, w, b


def test_value_equals_conv2d() -> None:
    x, w, b = _inputs()
    torch.testing.assert_close(single_channel_conv2d(x, w, b), F.conv2d(x, w, b))


def test_first_derivatives_pass_gradcheck() -> None:
    assert torch.autograd.gradcheck(single_channel_conv2d, _inputs())


def test_second_derivatives_pass_gradgradcheck() -> None:
    # The meta step differentiates through a gradient: the double backward must be exact too.
    assert torch.autograd.gradgradcheck(single_channel_conv2d, _inputs())


def test_double_backward_matches_conv2d() -> None:
    """Gradient of a gradient norm (the shape of the meta step's second-order term) equals nn.Conv2d's."""

    def second_order(conv) -> tuple[torch.Tensor, ...]:
        x, w, b = _inputs()
        y = conv(x, w, b)
        gx, gw = torch.autograd.grad((y.sin() ** 2).sum(), (x, w), create_graph=True)
        return torch.autograd.grad(gx.square().sum() + gw.square().sum(), (x, w, b))

    for ours, ref in zip(second_order(single_channel_conv2d), second_order(F.conv2d)):
        torch.testing.assert_close(ours, ref)


def test_rejects_multi_channel_input_with_clear_message() -> None:
    with pytest.raises(ValueError, match="1, H, W"):
        single_channel_conv2d(torch.rand(2, 3, 8, 8), torch.rand(4, 3, 3, 3))


def test_module_falls_back_to_conv2d_where_the_fast_path_does_not_apply() -> None:
    torch.manual_seed(0)
    for kwargs in ({"in_channels": 3}, {"in_channels": 1, "padding": 1}, {"in_channels": 1, "stride": 2}):
        ours = SingleChannelConv2d(out_channels=4, kernel_size=3, **kwargs)
        ref = nn.Conv2d(out_channels=4, kernel_size=3, **kwargs)
        ref.load_state_dict(ours.state_dict())
        x = torch.rand(2, kwargs["in_channels"], 10, 10)
        torch.testing.assert_close(ours(x), ref(x))


def test_encoder_keeps_the_parameter_names_and_function_of_the_plain_lenet() -> None:
    """Old checkpoints load unchanged; conv -> pool -> ReLU equals conv -> ReLU -> pool."""
    torch.manual_seed(0)
    enc = LeNetEncoder(1, (6, 16))
    assert sorted(enc.state_dict()) == ["features.0.bias", "features.0.weight", "features.3.bias", "features.3.weight"]
    plain = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
    plain.load_state_dict({k.removeprefix("features."): v for k, v in enc.state_dict().items()})
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(enc(x), plain(x))



def _transpose_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True)
    return z, w, b


def test_transpose_value_equals_conv_transpose2d() -> None:
    z, w, b = _transpose_inputs()
    torch.testing.assert_close(single_channel_conv_transpose2d(z, w, b), F.conv_transpose2d(z, w, b))


def test_transpose_first_and_second_derivatives_pass_gradcheck() -> None:
    assert torch.autograd.gradcheck(single_channel_conv_transpose2d, _transpose_inputs())
    assert torch.autograd.gradgradcheck(single_channel_conv_transpose2d, _transpose_inputs())


def test_transpose_double_backward_matches_conv_transpose2d() -> None:
    """The decoder's last layer in the meta step: the gradient of an input-gradient norm equals PyTorch's."""

    def second_order(op) -> tuple[torch.Tensor, ...]:
        z, w, b = _transpose_inputs()
        (gz,) = torch.autograd.grad((op(z, w, b).sigmoid() ** 2).sum(), (z,), create_graph=True)
        return torch.autograd.grad(gz.square().sum(), (z, w, b), allow_unused=True)

    for ours, ref in zip(second_order(single_channel_conv_transpose2d), second_order(F.conv_transpose2d)):
        if ref is None:
            assert ours is None or not ours.abs().any()
        else:
            torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    "g_shape, w_shape",
    [
        ((2, 6, 24, 24), (6, 1, 5, 5)),  # the LeNet decoder's last layer: two column blocks
        ((3, 4, 7, 9), (4, 1, 3, 3)),  # odd width: one block
        ((2, 3, 6, 10), (3, 1, 2, 4)),  # non-square kernel, even width
        ((1, 1, 1, 2), (1, 1, 1, 1)),  # the smallest case
    ],
)
def test_matmul_kernel_equals_onednn_transpose(g_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(*g_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(*w_shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(transpose_as_matmul(g, w), F.conv_transpose2d(g, w))
    strided = g.contiguous(memory_format=torch.channels_last)  # layout does not matter
    torch.testing.assert_close(transpose_as_matmul(strided, w), F.conv_transpose2d(g, w))


def test_transpose_rejects_mismatched_weight_with_clear_message() -> None:
    with pytest.raises(ValueError, match="C, 1, k, k"):
        single_channel_conv_transpose2d(torch.rand(2, 3, 8, 8), torch.rand(4, 1, 3, 3))


def test_transpose_module_falls_back_where_the_fast_path_does_not_apply() -> None:
    torch.manual_seed(0)
    for kwargs in ({"out_channels": 2}, {"out_channels": 1, "padding": 1}, {"out_channels": 1, "stride": 2}):
        ours = SingleChannelConvTranspose2d(in_channels=4, kernel_size=3, **kwargs)
        ref = nn.ConvTranspose2d(in_channels=4, kernel_size=3, **kwargs)
        ref.load_state_dict(ours.state_dict())
        z = torch.rand(2, 4, 6, 6)
        torch.testing.assert_close(ours(z), ref(z))


def test_decoder_keeps_the_parameter_names_and_function_of_the_plain_one() -> None:
    """Teacher checkpoints written before the fast last layer load and decode unchanged."""
    torch.manual_seed(0)
    dec = LeNetDecoder(1, (6, 16))
    plain = nn.Sequential(nn.Upsample(scale_factor=2), nn.ConvTranspose2d(16, 6, 5), nn.ReLU(),
                          nn.Upsample(scale_factor=2), nn.ConvTranspose2d(6, 1, 5), nn.Sigmoid())
    plain.load_state_dict({k.removeprefix("net."): v for k, v in dec.state_dict().items()})
    z = torch.rand(5, 16, 4, 4)
    out = dec(z)
    assert out.shape == (5, 1, 28, 28)
    torch.testing.assert_close(out, plain(z))
