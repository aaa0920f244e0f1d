"""fused_linf_attacks: the four online views as one batched attack, equal to advertorch's one-by-one views."""
from __future__ import annotations

import copy

import pytest
import torch

from mid_core.attacks import default_spec, run_attack
from mid_core.attacks.fused import can_fuse, fused_linf_attacks

FOUR = ("PGD_N", "PGD_T", "MIM_N", "MIM_T")


def _generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


@pytest.fixture(scope="module")
def trained64(trained):
    """The tiny classifier in float64, so a larger batch changes no gradient sign (float32 can flip near-zero ones)."""
    model, images, labels = trained
    return copy.deepcopy(model).double(), images.double(), labels


@pytest.mark.parametrize("steps", [1, 10])
def test_fused_views_equal_advertorchs_one_by_one_views(trained64, steps):
    model, images, labels = trained64
    specs = [default_spec(name, steps=steps) for name in FOUR]
    fused = fused_linf_attacks(specs, model, images, labels, _generators(7, 4))
    for spec, generator, adv in zip(specs, _generators(7, 4), fused):
        alone = run_attack(spec, model, images, labels, generator=generator).adversarial
        assert torch.allclose(adv, alone, rtol=0, atol=1e-12), spec.name


def test_fused_views_draw_the_same_targets_and_advance_the_generators_alike(trained):
    model, images, labels = trained
    specs = [default_spec(name, steps=2) for name in FOUR]
    fused_gens, alone_gens = _generators(3, 4), _generators(3, 4)
    fused_linf_attacks(specs, model, images, labels, fused_gens)
    for spec, generator in zip(specs, alone_gens):
        run_attack(spec, model, images, labels, generator=generator)
    for a, b in zip(fused_gens, alone_gens):  # the next draw agrees: both consumed the same numbers
        assert torch.equal(torch.randint(0, 2**31 - 1, (4,), generator=a), torch.randint(0, 2**31 - 1, (4,), generator=b))


def test_fused_views_stay_in_the_eps_ball_and_unit_range_and_fool_the_model(trained):
    model, images, labels = trained
    specs = [default_spec(name) for name in FOUR]
    for spec, adv in zip(specs, fused_linf_attacks(specs, model, images, labels, _generators(0, 4))):
        assert adv.shape == images.shape and adv.dtype == images.dtype
        assert float((adv - images).abs().max()) <= spec.eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        if not spec.targeted:
            with torch.no_grad():
                clean = (model(images).argmax(1) == labels).float().mean()
                robust = (model(adv).argmax(1) == labels).float().mean()
            assert robust < clean, spec.name


def test_fusing_leaves_the_model_and_the_global_rng_as_they_were(trained):
    model, images, labels = trained
    model.train()
    state = torch.random.get_rng_state()
    fused_linf_attacks([default_spec(n, steps=2) for n in FOUR], model, images, labels, _generators(0, 4))
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.equal(state, torch.random.get_rng_state())
    model.eval()


def test_specs_that_cannot_be_fused_are_rejected_with_a_clear_message(trained):
    model, images, labels = trained
    assert not can_fuse([default_spec("PGD_N"), default_spec("FGSM_N")])
    assert not can_fuse([default_spec("PGD_N", steps=10), default_spec("MIM_N", steps=20)])
    assert can_fuse([default_spec(n) for n in FOUR])
    with pytest.raises(ValueError, match="run the others with run_attack"):
        fused_linf_attacks([default_spec("PGD_N"), default_spec("CW_N")], model, images, labels, _generators(0, 2))
    with pytest.raises(ValueError, match="one generator per spec"):
        fused_linf_attacks([default_spec("PGD_N")], model, images, labels, _generators(0, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_views_equal_one_by_one_views_on_cuda(trained64):
    model, images, labels = trained64
    model, images, labels = copy.deepcopy(model).cuda(), images.cuda(), labels.cuda()
    specs = [default_spec(name, steps=10) for name in FOUR]
    fused = fused_linf_attacks(specs, model, images, labels, _generators(7, 4))
    for spec, generator, adv in zip(specs, _generators(7, 4), fused):
        alone = run_attack(spec, model, images, labels, generator=generator).adversarial
        assert adv.is_cuda and torch.allclose(adv, alone, rtol=0, atol=1e-9), spec.name
