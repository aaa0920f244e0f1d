"""Madry adversarial training epochs: the step is taken on the attacked batch, never on the clean one."""
from __future__ import annotations

import torch

from mid_core.attacks import default_spec, run_attack
from mid_core.models import StandardClassifier
from mid_core.training import adversarial_epoch


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
