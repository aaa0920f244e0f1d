"""Madry adversarial training epochs: the step is taken on the attacked batch, never on the clean one."""
from __future__ import annotations

import pytest
import torch

from mid_core.attacks import default_spec, run_attack
from mid_core.models import StandardClassifier, Teacher
from mid_core.training import DECODER_MIN_R2, adversarial_epoch, decoder_warning, reconstruction_r2, teacher_epoch


def _batches(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def test_adversarial_epoch_trains_on_what_the_attack_returns():
    torch.manual_seed(0)
    model = StandardClassifier.from_backbone("lenet_tiny")
    seen: list[torch.Tensor] = []

    def attack(target, x, y):
        adv = (x + 0.3).clamp(0, 1)
        seen.append(adv)
        return adv

    batches = _batches()
    before = [p.detach().clone() for p in model.parameters()]
    metrics = adversarial_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), attack)
    assert len(seen) == len(batches)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # the reported loss is the loss on the attacked images, not the clean ones
    assert 0.0 <= metrics["adv_train_accuracy"] <= 1.0 and metrics["adv_ce"] > 0


def test_madry_pgd_examples_stay_in_the_eps_ball_and_leave_parameter_grads_alone():
    torch.manual_seed(0)
    model = StandardClassifier.from_backbone("lenet_tiny")
    spec = default_spec("PGD_N", eps=0.3, steps=3, step_size=0.1, rand_init=True)
    grads: list[torch.Tensor] = []

    def attack(target, x, y):
        adv = run_attack(spec, target, x, y, generator=torch.Generator().manual_seed(1)).adversarial
        assert float((adv - x).abs().max()) <= 0.3 + 1e-6
        grads.extend(p.grad for p in target.parameters() if p.grad is not None)
        return adv

    adversarial_epoch(model, _batches(32), torch.optim.Adam(model.parameters(), lr=1e-3), attack)
    assert grads == []  # one batch: the attack itself put nothing into p.grad
    assert model.training


class _CopyDecoderTeacher(torch.nn.Module):
    """A stand-in teacher whose decoder returns a fixed image transform of the encoder's input."""

    def __init__(self, transform):
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.decoder = transform


def test_reconstruction_r2_is_one_for_a_perfect_decoder_and_zero_for_the_mean_image():
    x = torch.rand(50, 1, 28, 28)
    assert reconstruction_r2(_CopyDecoderTeacher(torch.nn.Identity()), x) == pytest.approx(1.0)
    mean_image = _CopyDecoderTeacher(lambda z: torch.full_like(z, float(x.mean())))
    assert reconstruction_r2(mean_image, x) == pytest.approx(0.0, abs=1e-5)
    blank = _CopyDecoderTeacher(torch.zeros_like)
    assert reconstruction_r2(blank, x) < 0


def test_decoder_warning_names_the_fix_only_when_the_decoder_fails():
    assert decoder_warning(0.9) is None
    message = decoder_warning(-0.17)
    assert message is not None and "recon_loss: bce" in message and "CC" in message


def test_bce_and_l2_teachers_learn_to_reconstruct_where_l1_collapses_to_blank():
    """The measured failure of the paper's L1 loss on mostly-black images, on a tiny synthetic set."""
    torch.manual_seed(0)
    x = torch.zeros(256, 1, 28, 28)
    for i in range(256):  # sparse bright strokes, like digits
        r, c = divmod(i % 16, 4)
        x[i, 0, 4 + 4 * r:8 + 4 * r, 4:24] = 1.0
        x[i, 0, 4:24, 4 + 5 * c:6 + 5 * c] = 1.0
    y = torch.arange(256) % 10
    scores = {}
    for kind in ("l1", "l2", "bce"):
        torch.manual_seed(0)
        teacher = Teacher.from_backbone("lenet_tiny")
        opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
        for _ in range(30):
            teacher_epoch(teacher, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)], opt, recon_loss=kind)
        scores[kind] = reconstruction_r2(teacher, x)
    assert min(scores["l2"], scores["bce"]) > DECODER_MIN_R2 > scores["l1"], scores
