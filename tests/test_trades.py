"""TRADES: the KL attack stays in the budget and finds a larger KL than its start; the step's loss is CE(clean) +
beta * KL(clean || adversarial), so beta weighs how far the model is pulled toward matching the two predictions."""
from __future__ import annotations

import pytest
import torch

from mid_core.models import StandardClassifier
from mid_core.trades import trades_epoch, trades_kl, trades_perturb


def _data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_the_kl_attack_stays_in_the_ball_and_image_range_and_raises_the_kl():
    torch.manual_seed(0)
    model = StandardClassifier.from_backbone("lenet_tiny")
    images, _ = _data()
    adv = trades_perturb(model, images, eps=0.3, steps=10, step_size=0.05, generator=torch.Generator().manual_seed(1))
    assert adv.shape == images.shape
    assert float((adv - images).abs().max()) <= 0.3 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    model.eval()
    with torch.no_grad():
        clean = model(images)
        start = trades_kl(model((images + 0.001 * torch.randn(images.shape)).clamp(0, 1)), clean)
        found = trades_kl(model(adv), clean)
    assert found > 10 * start
    assert model.training is False  # the caller's mode is restored (eval here)


def test_the_kl_is_zero_for_identical_predictions_and_positive_otherwise():
    logits = torch.randn(8, 10)
    assert float(trades_kl(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(trades_kl(logits + torch.randn(8, 10), logits)) > 0


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_one_step_descends_ce_plus_beta_times_kl(beta):
    """The parameter update equals the one taken by hand on CE(clean) + beta * KL(clean || given views)."""
    torch.manual_seed(0)
    model = StandardClassifier.from_backbone("lenet_tiny")
    reference = StandardClassifier.from_backbone("lenet_tiny")
    reference.load_state_dict(model.state_dict())
    images, labels = _data()
    views = (images + 0.2 * torch.randn(images.shape)).clamp(0, 1)
    metrics = trades_epoch(model, [(images, labels)], torch.optim.SGD(model.parameters(), lr=0.1),
                           lambda target, x: views, beta)
    reference.train()
    logits = reference(images)
    loss = torch.nn.functional.cross_entropy(logits, labels) + beta * trades_kl(reference(views), logits)
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert metrics["trades_kl"] > 0 and metrics["ce"] > 0 and 0 <= metrics["train_accuracy"] <= 1
