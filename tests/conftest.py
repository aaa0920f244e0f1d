"""Shared fixtures: data root, tiny configs, and one local Ray cluster per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("MID_DATA_ROOT", str(SHARED_DATA))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray cluster (4 logical CPUs on this 2-core machine, so Data + Train never starve)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=True, ignore_reinit_error=True, log_to_driver=True)
    yield ray
    ray.shutdown()


def _train_tiny(num_images: int = 300, epochs: int = 8):
    """A briefly trained lenet_tiny classifier on digits and 32 test images: (model, images, labels)."""
    from mid_core.datasets import load_dataset
    from mid_core.models import StandardClassifier

    torch.manual_seed(0)
    data = load_dataset("digits", "train")
    x, y = data.images[:num_images], data.labels[:num_images]
    model = StandardClassifier.from_backbone("lenet_tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for i in range(0, num_images, 50):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    test = load_dataset("digits", "test")
    return model, test.images[:32], test.labels[:32]


@pytest.fixture(scope="module")
def trained():
    """Per test module: a freshly trained tiny classifier (tests may change its flags)."""
    torch.set_num_threads(1)
    return _train_tiny()


class RoundedInputLinear(torch.nn.Module):
    """A linear classifier on rounded pixels: exactly zero input gradients, so gradient attacks are blind to it
    while a black-box attack (Square) breaks it. The textbook case of gradient masking."""

    def __init__(self, classes: int = 10, pixels: int = 36):
        super().__init__()
        self.linear = torch.nn.Linear(pixels, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.linear(torch.round(x).flatten(1))


@pytest.fixture
def masked_case():
    """(model, images (24, 1, 6, 6), labels): a ``RoundedInputLinear`` in eval mode with frozen weights, images of
    pixels 0.2 / 0.8 (an eps-0.3 step flips a pixel's rounding), labels = its own predictions (100% clean)."""
    torch.manual_seed(0)
    model = RoundedInputLinear().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    images = (torch.rand(24, 1, 6, 6) < 0.5).float() * 0.6 + 0.2
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


@pytest.fixture
def input_grad_norm_weight_grad():
    """The meta step's second-order quantity for a layer under test: ``d/dw ||d/dx sum(f(x)^2)||^2``.

    ``f(x)`` maps the input ``x`` (requires grad) to any tensor, through a layer with weight ``w``; comparing this
    between a fast layer and PyTorch's checks first and second derivatives together.
    """
    def probe(f, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        (dx,) = torch.autograd.grad(f(x).square().sum(), x, create_graph=True)
        (dw,) = torch.autograd.grad(dx.square().sum(), weight)
        return dw

    return probe
