"""``mid_core.kernels``: each CPU kernel equals its ``torch.nn`` layer in value and in first and second derivatives,
and ``use_cpu_kernels`` changes a model's speed only: same state dict, same outputs, same meta-step gradients."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mid_core.checkpoint import load_robust_model, load_teacher, read_checkpoint
from mid_core.kernels import MaxPool2x2, SingleChannelConv2d, SingleChannelConvTranspose2d, use_cpu_kernels
from mid_core.meta_step import BENIGN, MetaConfig, meta_step
from mid_core.models import StandardClassifier, Teacher, student_from_teacher

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted(REPO.glob("models/*/*.pt"))
KERNEL_CLASSES = (SingleChannelConv2d, SingleChannelConvTranspose2d, MaxPool2x2)


def _pair(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(plain float64 ``layer``, its swapped copy with the same parameters)."""
    plain = layer.double()
    fast = use_cpu_kernels(copy.deepcopy(plain))
    assert isinstance(fast, KERNEL_CLASSES), type(fast)
    return plain, fast


def _as_function(layer: nn.Module):
    """``layer`` as a function of (input, weight, bias), for ``gradcheck``."""
    return lambda x, w, b: functional_call(layer, {"weight": w, "bias": b}, (x,))


def _float64(*shapes: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


# ------------------------------------------------------------------------------------------ convolutions

CONVS = {
    "conv": (lambda: nn.Conv2d(1, 4, 3), (3, 1, 9, 8)),
    "conv_non_square": (lambda: nn.Conv2d(1, 3, (2, 4)), (2, 1, 7, 9)),
    "transpose_even_width": (lambda: nn.ConvTranspose2d(6, 1, 5), (2, 6, 8, 8)),  # as the LeNet decoder's last layer
    "transpose_odd_width": (lambda: nn.ConvTranspose2d(4, 1, 3), (3, 4, 7, 9)),
    "transpose_non_square": (lambda: nn.ConvTranspose2d(3, 1, (2, 4)), (2, 3, 6, 10)),
    "transpose_smallest": (lambda: nn.ConvTranspose2d(1, 1, 1), (1, 1, 1, 2)),
}


@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_conv_value_and_first_and_second_derivatives_equal_torch_nn(name: str, memory_format) -> None:
    torch.manual_seed(0)
    make, shape = CONVS[name]
    plain, fast = _pair(make())
    (x,) = _float64(shape)
    x = x.detach().contiguous(memory_format=memory_format).requires_grad_()
    w, b = (p.detach().clone().requires_grad_() for p in (plain.weight, plain.bias))
    torch.testing.assert_close(fast(x), plain(x))
    assert torch.autograd.gradcheck(_as_function(fast), (x, w, b))
    assert torch.autograd.gradgradcheck(_as_function(fast), (x, w, b))


@pytest.mark.parametrize("name", ["conv", "transpose_even_width"])
def test_conv_gradient_of_an_input_gradient_norm_equals_torch_nn(name: str, input_grad_norm_weight_grad) -> None:
    """The meta step's second-order quantity through the layer and a nonlinearity."""
    torch.manual_seed(0)
    make, shape = CONVS[name]
    plain, fast = _pair(make())
    (x,) = _float64(shape)
    ours, ref = (input_grad_norm_weight_grad(lambda t: layer(t).sigmoid(), x, layer.weight) for layer in (fast, plain))
    torch.testing.assert_close(ours, ref)


# ------------------------------------------------------------------------------------------ 2x2 max-pooling


def _tied_maps(shape: tuple[int, ...] = (3, 4, 8, 6)) -> torch.Tensor:
    """Random maps with the ties MNIST produces: whole tied windows and maxima repeated inside a window."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x[:, :, :2] = 0.25
    x[:, :, 4, ::3] = 3.0
    x[:, :, 5, 1::2] = 3.0
    return x


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_pool_values_and_gradients_equal_torch_nn_bit_for_bit_on_tied_windows(memory_format) -> None:
    """Ties send the whole gradient to the first maximum, as PyTorch's pooling does."""
    plain, fast = nn.MaxPool2d(2), use_cpu_kernels(nn.MaxPool2d(2))
    x = _tied_maps().contiguous(memory_format=memory_format).requires_grad_()
    upstream = torch.randn(3, 4, 4, 3)
    ours, theirs = fast(x), plain(x)
    assert torch.equal(ours, theirs)
    assert torch.equal(torch.autograd.grad(ours, x, upstream)[0], torch.autograd.grad(theirs, x, upstream)[0])
    with torch.no_grad():
        assert torch.equal(fast(x), theirs)


def test_pool_first_and_second_derivatives_are_exact(input_grad_norm_weight_grad) -> None:
    fast = use_cpu_kernels(nn.MaxPool2d(2))
    (x,) = _float64((2, 3, 6, 4))  # distinct values: finite differences are undefined at ties
    assert torch.autograd.gradcheck(fast, (x,))
    assert torch.autograd.gradgradcheck(fast, (x,))
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3)
    x = torch.rand(5, 4, 10, 10, requires_grad=True)
    ours, ref = (input_grad_norm_weight_grad(lambda t: pool(conv(t)).relu(), x, conv.weight)
                 for pool in (fast, nn.MaxPool2d(2)))
    assert torch.equal(ours, ref)


def test_pool_window_with_a_nan_gives_nan() -> None:
    x = _tied_maps()
    x[0, 0, 0, 1] = float("nan")
    assert torch.equal(torch.isnan(use_cpu_kernels(nn.MaxPool2d(2))(x)), torch.isnan(nn.MaxPool2d(2)(x)))


# ------------------------------------------------------------------------------------------ use_cpu_kernels


def test_swapping_keeps_the_state_dict_and_the_parameter_objects() -> None:
    model = Teacher.from_backbone("lenet5")
    before = model.state_dict(keep_vars=True)
    values = {k: v.detach().clone() for k, v in before.items()}
    use_cpu_kernels(model)
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    assert all(after[k] is before[k] and torch.equal(after[k], values[k]) for k in before)
    swapped = {type(m) for m in model.modules() if isinstance(m, KERNEL_CLASSES)}
    assert swapped == set(KERNEL_CLASSES)


@pytest.mark.parametrize("backbone", ["lenet5", "lenet5_classic"])
def test_swapped_teacher_decodes_and_classifies_as_the_plain_one(backbone: str) -> None:
    torch.manual_seed(0)
    plain = Teacher.from_backbone(backbone)
    fast = use_cpu_kernels(copy.deepcopy(plain))
    x = torch.rand(6, 1, 28, 28)
    for ours, ref in zip(fast(x), plain(x)):
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("backbone", ["lenet5", "lenet5_classic"])
def test_meta_step_gradients_equal_with_and_without_kernels(backbone: str) -> None:
    """Second order, in float64: the kernels in student and teacher give the plain models' update."""
    torch.manual_seed(0)
    teacher = Teacher.from_backbone(backbone).double().freeze()
    student = student_from_teacher(teacher, "random")
    g = torch.Generator().manual_seed(1)
    views = {name: torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64) for name in (BENIGN, "PGD_N", "MIM_N")}
    labels = torch.randint(0, 10, (4,), generator=g)
    config = MetaConfig(first_order=False)
    plain = meta_step(student, teacher, views, labels, "PGD_N", config)
    fast = meta_step(use_cpu_kernels(copy.deepcopy(student)), use_cpu_kernels(copy.deepcopy(teacher)), views,
                     labels, "PGD_N", config)
    assert list(fast.grads) == list(plain.grads)
    for name, grad in plain.grads.items():
        torch.testing.assert_close(fast.grads[name], grad, rtol=1e-9, atol=1e-12)


def test_only_layers_a_kernel_supports_are_swapped() -> None:
    others = nn.ModuleList([nn.Conv2d(3, 4, 3), nn.Conv2d(1, 4, 3, stride=2), nn.Conv2d(1, 4, 3, padding=1),
                            nn.ConvTranspose2d(4, 2, 3), nn.ConvTranspose2d(4, 1, 3, stride=2), nn.MaxPool2d(3),
                            nn.MaxPool2d(2, ceil_mode=True), nn.Upsample(scale_factor=2)])
    kinds = [type(m) for m in others]
    use_cpu_kernels(others)
    assert [type(m) for m in others] == kinds


def test_swapped_layers_run_torch_nn_on_inputs_they_do_not_support() -> None:
    torch.manual_seed(0)
    conv, pool = nn.Conv2d(1, 4, 3), nn.MaxPool2d(2)
    fast_conv, fast_pool = use_cpu_kernels(copy.deepcopy(conv)), use_cpu_kernels(nn.MaxPool2d(2))
    unbatched, odd = torch.rand(1, 9, 9), torch.rand(2, 3, 7, 9)
    torch.testing.assert_close(fast_conv(unbatched), conv(unbatched))
    assert torch.equal(fast_pool(odd), pool(odd))
    x = torch.rand(2, 1, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = fast_conv(x), conv(x)
    assert ours.dtype == ref.dtype == torch.bfloat16 and torch.equal(ours, ref)
    ours.float().sum().backward()


def test_swapping_twice_changes_nothing_more() -> None:
    once = use_cpu_kernels(Teacher.from_backbone("lenet_tiny"))
    twice = use_cpu_kernels(copy.deepcopy(once))
    assert [type(m) for m in twice.modules()] == [type(m) for m in once.modules()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_swapped_model_on_cuda_runs_torch_nn() -> None:
    torch.manual_seed(0)
    plain = Teacher.from_backbone("lenet5").cuda()
    fast = use_cpu_kernels(copy.deepcopy(plain))
    x = torch.rand(4, 1, 28, 28, device="cuda")
    for ours, ref in zip(fast(x), plain(x)):
        assert torch.equal(ours, ref)


# ------------------------------------------------------------------------------------------ committed checkpoints


@pytest.mark.skipif(not CHECKPOINTS, reason="no committed checkpoints under models/")
def test_every_committed_checkpoint_loads_into_the_plain_model() -> None:
    for path in CHECKPOINTS:
        model = load_teacher(path) if read_checkpoint(path)["kind"] == "teacher" else load_robust_model(path)
        assert not any(isinstance(m, KERNEL_CLASSES) for m in model.modules()), path


@pytest.mark.skipif(not CHECKPOINTS, reason="no committed checkpoints under models/")
def test_a_committed_model_predicts_the_same_with_cpu_kernels() -> None:
    path = next(p for p in CHECKPOINTS if read_checkpoint(p)["kind"] == "deployed")
    plain = load_robust_model(path)
    assert isinstance(plain, StandardClassifier)
    fast = use_cpu_kernels(copy.deepcopy(plain))
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast(x), plain(x))
