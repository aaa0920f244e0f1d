"""Write ``store_schema_v1.zarr``: a tiny finalized adversarial store in schema version 1.

The committed copy was written by the storage_schemas code of schema version 1 and is kept as it is,
so tests can check that stores written by earlier code still open, validate and read the same rows.
Rerun only to create the fixture anew (``python tests/data/make_store_schema_v1.py``); the row values
below are restated in ``tests/test_store_fixture.py``.

Contents: 6 rows of 1x4x4 images in blocks of 4 (2 blocks, the last one 2 rows long), attacks
``PGD_N`` (untargeted) and ``CW_T`` (targeted), finalized with ``extra_attrs={"run_id": "fixture"}``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from storage_schemas import create_store  # noqa: E402

NUM_ROWS, BLOCK, SHAPE = 6, 4, (1, 4, 4)
ATTACKS = {
    "PGD_N": {"library": "advertorch", "class": "LinfPGDAttack", "eps": 0.3, "steps": 40, "targeted": False},
    "CW_T": {"library": "advertorch", "class": "CarliniWagnerL2Attack", "steps": 100, "targeted": True},
}
SUCCESS = {0: {"PGD_N": 3, "CW_T": 1}, 1: {"PGD_N": 2, "CW_T": 0}}


def rows(start: int, stop: int) -> dict[str, np.ndarray]:
    """The fixture's rows [start, stop): clean row i holds (16 i + k) % 256, k = 0..15."""
    i = np.arange(start, stop)
    clean = ((i[:, None] * 16 + np.arange(16)[None, :]) % 256).astype(np.uint8).reshape(-1, *SHAPE)
    return {
        "clean": clean,
        "label": (i % 10).astype(np.int64),
        "adv/PGD_N": (255 - clean).astype(np.uint8),
        "adv/CW_T": (clean ^ 0x55).astype(np.uint8),
        "target/CW_T": ((i + 1) % 10).astype(np.int64),
    }


def main() -> None:
    path = HERE / "store_schema_v1.zarr"
    shutil.rmtree(path, ignore_errors=True)
    store = create_store(
        path, dataset="mnist", split="test", num_rows=NUM_ROWS, image_shape=SHAPE, attacks=ATTACKS,
        source_fingerprint="ab" * 32, source_arch="lenet", seed=7, block_size=BLOCK,
    )
    for b in range(store.num_blocks):
        r = rows(*store.block_range(b))
        store.write_block(
            b, clean=r["clean"], labels=r["label"],
            adversarial={"PGD_N": r["adv/PGD_N"], "CW_T": r["adv/CW_T"]},
            targets={"CW_T": r["target/CW_T"]}, success_counts=SUCCESS[b],
        )
    store.finalize(extra_attrs={"run_id": "fixture"})
    print(store.summary())


if __name__ == "__main__":
    main()
