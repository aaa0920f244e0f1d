"""8-bit quantisation of adversarial images: inside the eps ball, inside [0, 255], exact for 8-bit inputs."""
from __future__ import annotations

import pytest
import torch

from mid_core.quantize import from_uint8, linf_levels, quantize_adversarial, to_uint8


def _clean_8bit(generator: torch.Generator, shape=(8, 1, 12, 12)) -> torch.Tensor:
    """8-bit clean images with many pixels at the edges 0 and 255."""
    levels = torch.randint(0, 256, shape, generator=generator)
    edge = torch.rand(shape, generator=generator)
    levels = torch.where(edge < 0.3, torch.zeros_like(levels), levels)
    levels = torch.where(edge > 0.7, torch.full_like(levels, 255), levels)
    return levels.float() / 255


def test_uint8_round_trip_is_exact_for_8bit_images():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(from_uint8(levels)), levels)
    assert from_uint8(levels).dtype == torch.float32


def test_to_uint8_rounds_to_the_nearest_level():
    x = torch.tensor([0.0, 0.4 / 255, 0.6 / 255, 1.0, 127.6 / 255]).view(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 0, 1, 255, 128]


def test_to_uint8_rejects_values_outside_unit_range_and_nan():
    with pytest.raises(ValueError):
        to_uint8(torch.tensor([[[[1.5]]]]))
    with pytest.raises(ValueError):
        to_uint8(torch.tensor([[[[float("nan")]]]]))


def test_from_uint8_rejects_float_input():
    with pytest.raises(ValueError):
        from_uint8(torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("eps", [0.3, 8 / 255, 0.1, 1 / 255, 2 / 255 + 1e-9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantized_adversarial_stays_in_the_eps_ball_and_in_range(eps, seed):
    g = torch.Generator().manual_seed(seed)
    clean = _clean_8bit(g)
    # adversarial anywhere in the (continuous) eps ball, plenty of it on the boundary, clipped to [0, 1]
    delta = (torch.rand(clean.shape, generator=g) * 2 - 1) * eps
    on_boundary = torch.rand(clean.shape, generator=g) < 0.5
    delta = torch.where(on_boundary, eps * delta.sign(), delta)
    adv = (clean + delta).clamp(0, 1)
    q = quantize_adversarial(adv, clean, eps)
    assert q.dtype == torch.uint8 and q.shape == clean.shape
    diff_levels = (q.int() - torch.round(clean * 255).int()).abs()
    assert int(diff_levels.max()) <= int(eps * 255 + 1e-6)
    assert float((from_uint8(q) - clean).abs().max()) <= eps + 1e-6


def test_eps_03_boundary_rounds_inward_not_outward():
    # 0.3 is 76.5 levels: rounding alone would give 77 levels (0.302 > eps); the clip keeps 76.
    clean = torch.tensor([0.0, 1.0, 100 / 255]).view(1, 1, 1, 3)
    adv = torch.tensor([0.3, 0.7, 100 / 255 + 0.3]).view(1, 1, 1, 3)
    q = quantize_adversarial(adv, clean, 0.3)
    assert q.flatten().tolist() == [76, 255 - 76, 176]
    assert linf_levels(0.3) == 76


def test_exact_level_radius_is_kept():
    # eps = 8/255 is exactly 8 levels; float noise in eps * 255 must not drop it to 7.
    assert linf_levels(8 / 255) == 8
    clean = torch.full((1, 1, 1, 1), 50 / 255)
    assert int(quantize_adversarial(clean + 8 / 255, clean, 8 / 255)) == 58


def test_perturbations_inside_the_ball_are_only_rounded():
    g = torch.Generator().manual_seed(0)
    clean = _clean_8bit(g)
    adv = (clean + (torch.rand(clean.shape, generator=g) * 2 - 1) * 0.1).clamp(0, 1)
    assert torch.equal(quantize_adversarial(adv, clean, 0.3), to_uint8(adv))


def test_no_eps_means_plain_rounding():
    g = torch.Generator().manual_seed(0)
    clean = _clean_8bit(g)
    adv = torch.rand(clean.shape, generator=g)
    assert torch.equal(quantize_adversarial(adv, clean, None), to_uint8(adv))


def test_uint8_clean_images_are_accepted():
    g = torch.Generator().manual_seed(0)
    clean = _clean_8bit(g)
    adv = (clean + 0.3).clamp(0, 1)
    assert torch.equal(quantize_adversarial(adv, to_uint8(clean), 0.1), quantize_adversarial(adv, clean, 0.1))


def test_clean_images_that_are_not_8bit_are_rejected():
    clean = torch.full((1, 1, 2, 2), 0.5 / 255 + 0.2)  # 51.5 levels
    with pytest.raises(ValueError, match="8-bit"):
        quantize_adversarial(clean, clean, 0.1)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        quantize_adversarial(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 4, 4), 0.1)
