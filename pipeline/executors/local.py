"""The single-process executor: every stage in this process, on its CPU or one GPU. Imports no Ray.

Generation writes the planned blocks one after another; a training function runs once as rank 0 of 1 and reads
the store's blocks directly, in the planned order. The results equal the Ray executor's with one training worker.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.executors.base import WorkerResources, auto_threads, resolve

log = logging.getLogger(__name__)


def store_block_columns(store: Any, block: int, attacks: list[str] | None = None) -> dict[str, np.ndarray]:
    """One store block as the columns training reads: ``clean``, ``label`` and ``adv_<attack>`` per attack."""
    rows = store.read_block(block, attacks=attacks)
    columns = {"clean": rows["clean"], "label": rows["label"]}
    for name in attacks if attacks is not None else store.attack_names:
        columns[f"adv_{name}"] = rows[f"adv/{name}"]
    return columns


class LocalContext:
    """Rank 0 of 1 on ``device``; ``store_blocks`` reads ``store`` in ``block_order``."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device, store: str | None, block_order: list[int] | None) -> None:
        self.device = device
        self._store, self._order = store, block_order

    def average_gradients(self, module: nn.Module) -> None:
        return None

    def broadcast_parameters(self, module: nn.Module) -> None:
        return None

    def max_divergence(self, module: nn.Module) -> float:
        return 0.0

    def store_blocks(self) -> Iterator[dict[str, np.ndarray]]:
        from storage_schemas import open_store

        if self._store is None:
            raise RuntimeError("this training function was started without a store")
        store = open_store(self._store, require_complete=True)
        for block in self._order if self._order is not None else range(store.num_blocks):
            yield store_block_columns(store, block)

    def report(self, metrics: Mapping[str, Any]) -> None:
        return None


class LocalExecutor:
    """See the module docstring."""

    name = "local"

    def generate(self, generator_kwargs: dict[str, Any], blocks: list[int], *, actors: int, actor_cpus: float,
                 actor_gpus: float, label: str) -> None:
        from pipeline.stages.pool import BlockGenerator

        device = "cuda" if actor_gpus > 0 and torch.cuda.is_available() else "cpu"
        kwargs = {**generator_kwargs, "device": device, "num_threads": auto_threads(0, 1)}
        generator = BlockGenerator(**kwargs)
        for block in tqdm(blocks, desc=f"generate {label}", unit="block"):
            generator.write(block)

    def train(self, fn: str, loop_config: dict[str, Any], resources: WorkerResources, *, name: str,
              store: str | None = None, block_order: list[int] | None = None, max_failures: int = 0) -> None:
        device = torch.device("cuda" if resources.use_gpu and torch.cuda.is_available() else "cpu")
        if resources.use_gpu and device.type == "cpu":
            log.warning("%s: the config asks for a GPU (use_gpu: true) but CUDA is not available; training on the CPU", name)
        torch.set_num_threads(auto_threads(resources.torch_threads, 1))
        resolve(fn)(LocalContext(device, store, block_order), loop_config)
