"""The committed zoo's clean accuracies are what its README claims, re-checked on the test images each claim was
measured on (a section's line starting "First N test images", else the whole test set)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mid_core import load_robust_model
from mid_core.datasets import load_dataset
from mid_core.evaluation import accuracy

ZOO = Path(__file__).resolve().parents[1] / "models"


def _claims(readme: Path) -> dict[str, tuple[float, int | None]]:
    """model file -> (benign accuracy (%) of its first table row in the README, the number of first test images it
    was measured on, None for all)."""
    claims, current, images = {}, None, None
    for line in readme.read_text().splitlines():
        m = re.match(r"## `(.+\.pt)`", line)
        if m:
            current, images = m.group(1), None
        elif current and current not in claims:
            subset = re.match(r"First ([\d,]+) test images", line)  # a section's own image-count line
            if subset:
                images = int(subset.group(1).replace(",", ""))
            if re.match(r"\| (paper|whitebox|transfer) \|", line):
                claims[current] = (float(line.split("|")[2]), images)
    return claims


@pytest.mark.parametrize("readme", sorted(ZOO.glob("*/README.md")), ids=lambda p: p.parent.name)
def test_zoo_models_load_and_match_their_claimed_clean_accuracy(readme):
    claims = _claims(readme)
    assert claims, f"{readme} lists no model"
    dataset = "fmnist" if readme.parent.name.startswith("fmnist") else "mnist"
    test = load_dataset(dataset, "test")
    for name, (claimed, images) in claims.items():
        model = load_robust_model(readme.parent / name)
        measured = 100 * accuracy(model, test.images[:images], test.labels[:images])
        assert measured == pytest.approx(claimed, abs=0.011), name
