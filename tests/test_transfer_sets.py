"""pipeline.transfer_sets: a saved transfer set is used only for exactly the substitute, attack and split it was made for."""
from __future__ import annotations

import torch

from mid_core.attacks import default_spec
from pipeline.transfer_sets import load_transfer_set, save_transfer_set, transfer_identity


def _identity(sha: str = "a" * 64, **overrides):
    args = {"spec": default_spec("PGD_N"), "dataset": "mnist", "images": 8, "seed": 10_000, "batch_size": 4}
    args.update(overrides)
    return transfer_identity(sha, **args)


def test_a_saved_set_loads_back_exactly(tmp_path):
    adv = torch.rand(8, 1, 28, 28)
    save_transfer_set(tmp_path, "PGD_N", _identity(), adv)
    assert torch.equal(load_transfer_set(tmp_path, "PGD_N", _identity()), adv)


def test_a_set_made_for_anything_else_is_not_used(tmp_path):
    save_transfer_set(tmp_path, "PGD_N", _identity(), torch.rand(8, 1, 28, 28))
    others = [_identity("b" * 64), _identity(spec=default_spec("PGD_N", steps=10)), _identity(dataset="fmnist"),
              _identity(images=16), _identity(seed=10_001), _identity(batch_size=8)]
    assert all(load_transfer_set(tmp_path, "PGD_N", other) is None for other in others)
    assert load_transfer_set(tmp_path, "MIM_N", _identity()) is None  # never saved


def test_a_damaged_file_is_regenerated_not_fatal(tmp_path):
    (tmp_path / "PGD_N.pt").write_bytes(b"not a torch file")
    assert load_transfer_set(tmp_path, "PGD_N", _identity()) is None
