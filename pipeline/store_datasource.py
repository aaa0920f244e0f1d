"""A Ray Data datasource over the adversarial Zarr store (Ray's own ``read_zarr`` is alpha and Zarr-v2 only).

Each read task covers a contiguous run of whole store blocks (chunk-aligned reads: Zarr 3 small-slice reads
cost ~2 ms each) and yields one Ray block per store block with index-aligned columns:
``clean`` uint8 (n, C, H, W), ``label`` int64 (n,), and per attack ``adv_<name>`` uint8 (n, C, H, W)
(plus ``target_<name>`` int64 (n,) for targeted attacks when ``include_targets``).
Shuffling happens downstream (block order + each worker's local shuffle buffer).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask


def adv_column(name: str) -> str:
    return f"adv_{name}"


class AdversarialStoreDatasource(Datasource):
    """Streams index-aligned rows of a complete store; see module docstring for the columns."""

    def __init__(self, path: str, expected_fingerprint: str | None = None, include_targets: bool = False) -> None:
        from storage_schemas import open_store

        super().__init__()
        store = open_store(path, expected_fingerprint=expected_fingerprint, require_complete=True)
        self.path = str(path)
        self.num_rows = store.num_rows
        self.num_blocks = store.num_blocks
        self.attack_names = list(store.attack_names)
        self.targeted = [n for n in self.attack_names if store.attack_spec(n).get("targeted")]
        self.pixels = int(np.prod(store.image_shape))
        self.include_targets = include_targets
        self._ranges = [store.block_range(b) for b in range(store.num_blocks)]

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return self.num_rows * (self.pixels * (1 + len(self.attack_names)) + 8 * (1 + len(self.targeted)))

    def _read_blocks(self, blocks: list[int]) -> Iterable[Any]:
        from storage_schemas import open_store

        store = open_store(self.path)
        for b in blocks:
            rows = store.read_rows(*self._ranges[b])
            batch = {"clean": rows["clean"], "label": rows["label"]}
            for name in self.attack_names:
                batch[adv_column(name)] = rows[f"adv/{name}"]
                if self.include_targets and name in self.targeted:
                    batch[f"target_{name}"] = rows[f"target/{name}"]
            yield BlockAccessor.batch_to_block(batch)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        groups = np.array_split(np.arange(self.num_blocks), max(1, min(parallelism, self.num_blocks)))
        tasks = []
        for group in groups:
            blocks = [int(b) for b in group]
            if not blocks:
                continue
            rows = sum(self._ranges[b][1] - self._ranges[b][0] for b in blocks)
            size = rows * (self.pixels * (1 + len(self.attack_names)) + 8 * (1 + len(self.targeted)))
            meta = BlockMetadata(num_rows=rows, size_bytes=int(size), input_files=None, exec_stats=None)
            tasks.append(ReadTask(lambda blocks=blocks: self._read_blocks(blocks), meta, per_task_row_limit=per_task_row_limit))
        return tasks


def read_store(path: str, expected_fingerprint: str | None = None, include_targets: bool = False) -> Any:
    """The store as a ``ray.data.Dataset`` (one row per image, all views aligned)."""
    import ray.data

    return ray.data.read_datasource(AdversarialStoreDatasource(path, expected_fingerprint, include_targets))
