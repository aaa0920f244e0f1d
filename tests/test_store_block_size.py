"""Block size of a new store: no generation actor idles; an existing store keeps the block size it was made with."""
from __future__ import annotations

import pytest

from pipeline.stages.pool import store_block_size
from storage_schemas import create_store


@pytest.mark.parametrize("rows, block, actors, expected", [
    (20_000, 1024, 2, 1024),  # 20 blocks for 2 actors: pool.block_size as configured
    (50, 1024, 2, 25),        # CW/JSMA on the first 50 test images: one block per actor
    (51, 1024, 2, 26),        # the second block takes the remainder
    (3, 1024, 8, 1),          # never an empty block
    (50, 1024, 1, 1024),      # one actor: nothing to split
])
def test_new_store_gives_every_actor_a_block(tmp_path, rows, block, actors, expected):
    got = store_block_size(str(tmp_path / "new.zarr"), rows, block, actors)
    assert got == expected
    assert -(-rows // got) >= min(actors, rows)


def test_existing_store_keeps_its_block_size(tmp_path):
    path = tmp_path / "old.zarr"
    create_store(path, dataset="mnist", split="test", num_rows=50, image_shape=(1, 4, 4),
                 attacks={"PGD_N": {"library": "advertorch", "class": "LinfPGDAttack", "eps": 0.3, "steps": 40,
                                    "targeted": False}},
                 source_fingerprint="f" * 64, source_arch="lenet", seed=0, block_size=1024)
    assert store_block_size(str(path), 50, 1024, 2) == 1024  # made before the split rule: resumed unchanged
