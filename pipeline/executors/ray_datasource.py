"""A Ray Data datasource over the adversarial store (Ray's own ``read_zarr`` is alpha and Zarr-v2 only).

One read task per store block, in the order the stage planned (``block_order``), each yielding one Ray block with the
columns training reads (``pipeline.executors.local.store_block_columns``): ``clean`` uint8 ``(n, C, H, W)``,
``label`` int64 ``(n,)`` and ``adv_<attack>`` uint8 ``(n, C, H, W)`` per attack. With ``preserve_order`` on, a
single training worker receives the blocks in exactly that order, as the single-process executor reads them; the
rows are shuffled by the training stage itself.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask


class AdversarialStoreDatasource(Datasource):
    """Streams whole blocks of a complete store; see the module docstring for the columns."""

    def __init__(self, path: str, block_order: list[int] | None = None) -> None:
        from storage_schemas import open_store

        super().__init__()
        store = open_store(path, require_complete=True)
        self.path = str(path)
        self.order = list(block_order) if block_order is not None else list(range(store.num_blocks))
        self.ranges = [store.block_range(b) for b in range(store.num_blocks)]
        self.row_bytes = int(np.prod(store.image_shape)) * (1 + len(store.attack_names)) + 8

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return sum(stop - start for start, stop in self.ranges) * self.row_bytes

    def _read(self, block: int) -> Iterable[Any]:
        from pipeline.executors.local import store_block_columns
        from storage_schemas import open_store

        yield BlockAccessor.batch_to_block(store_block_columns(open_store(self.path), block))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = []
        for block in self.order:
            rows = self.ranges[block][1] - self.ranges[block][0]
            meta = BlockMetadata(num_rows=rows, size_bytes=rows * self.row_bytes, input_files=None, exec_stats=None)
            tasks.append(ReadTask(lambda block=block: self._read(block), meta, per_task_row_limit=per_task_row_limit))
        return tasks


def read_store(path: str, block_order: list[int] | None = None) -> Any:
    """The store as a ``ray.data.Dataset`` of whole blocks in ``block_order``."""
    import ray.data

    return ray.data.read_datasource(AdversarialStoreDatasource(path, block_order))
