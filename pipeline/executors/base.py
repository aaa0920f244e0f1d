"""What a stage asks of an executor, and what a training function sees of its worker.

A training function is a plain function ``fn(ctx: WorkerContext, loop_config: dict) -> None`` named by its import
path (``"pipeline.stages.mid:train_worker"``), so any executor can start it in any process. It learns its rank, world
size and device from ``ctx``, averages its gradients with ``ctx.average_gradients`` (hand all-reduce: the MID meta
step's second-order gradients do not go through DDP), and reads its share of a store's blocks with
``ctx.store_blocks()`` in the order the stage planned. Blocks a stage makes itself (in-memory data for online attack
views) are split with ``shard_blocks``: every rank takes its own blocks, as a store's are split between workers.

Generation is a list of store blocks; each is computed and written whole by a ``BlockGenerator``
(``pipeline.stages.pool``) built from the same keyword arguments in every executor.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class WorkerResources:
    """How many training workers a stage runs and what each gets."""

    workers: int = 1
    cpus: float = 0.5  # per worker, fractional so Ray Data's read tasks always find a CPU
    use_gpu: bool = False  # one GPU per worker
    torch_threads: int = 0  # 0: machine cores / workers


class WorkerContext(Protocol):
    """One training worker's view of the run."""

    rank: int
    world_size: int
    device: torch.device

    def average_gradients(self, module: nn.Module) -> None:
        """Replace every parameter gradient by its mean over the workers (no-op with one worker)."""

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Give every worker rank 0's parameters (no-op with one worker)."""

    def max_divergence(self, module: nn.Module) -> float:
        """The largest difference of a parameter checksum between this worker and any other (0 with one)."""

    def store_blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """This worker's blocks of the stage's store, each a dict of index-aligned columns (``clean`` uint8
        ``(n, C, H, W)``, ``label`` int64 ``(n,)``, ``adv_<attack>`` uint8 ``(n, C, H, W)``), in the planned order."""

    def report(self, metrics: Mapping[str, Any]) -> None:
        """Hand a finished training function's last metrics to the executor (Ray Train's bookkeeping; a no-op in
        one process)."""


class Executor(Protocol):
    """Runs a stage's generation blocks and training functions."""

    name: str

    def generate(self, generator_kwargs: dict[str, Any], blocks: list[int], *, actors: int, actor_cpus: float,
                 actor_gpus: float, label: str) -> None:
        """Compute and write every block of ``blocks`` with ``BlockGenerator(**generator_kwargs)``."""

    def train(self, fn: str, loop_config: dict[str, Any], resources: WorkerResources, *, name: str,
              store: str | None = None, block_order: list[int] | None = None, max_failures: int = 0) -> None:
        """Run training function ``fn`` (``"module:function"``) on ``resources.workers`` workers; with ``store``, the
        workers read its blocks in ``block_order``. A failed worker group is restarted up to ``max_failures`` times
        (the function resumes from the state it saved)."""


def shard_blocks(order: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s share of the blocks listed in ``order`` (of ``world_size`` ranks): every ``world_size``-th block
    from the ``rank``-th, in ``order``. The shares are disjoint and together hold every block once, so the ranks of a
    data-parallel run see the same images per epoch as one worker, each computing only its own."""
    return list(order[rank::world_size])


def resolve(fn: str) -> Callable[..., Any]:
    """The function named ``"package.module:function"``."""
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


def auto_threads(requested: int, parallel: int) -> int:
    """Torch threads for one of ``parallel`` workers: ``requested``, or cores // parallel when 0."""
    if requested > 0:
        return requested
    return max(1, (os.cpu_count() or 1) // max(1, parallel))

