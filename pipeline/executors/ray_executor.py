"""The Ray executor: generation blocks on a pool of Ray Data actors, training functions on Ray Train workers.

Generation: one row per pending block -> ``map_batches`` over stateful ``BlockGenerator`` actors (each loads the
frozen source model and the data split once). Ray Data restarts a killed actor and retries its block; a block is
written whole and marked done last, and a rewrite writes the same bytes, so nothing is lost or duplicated.

Training: ``TorchTrainer`` runs the stage's training function on ``workers`` workers (fractional CPUs, or one GPU
each with NCCL) and restarts the group up to ``max_failures`` times; the function resumes from the state it saved
under ``output_dir``. The student is not wrapped in DDP (no higher-order gradients there): workers average
gradients by hand through ``torch.distributed``. The store is streamed to the workers by
``pipeline.executors.ray_datasource`` in the planned block order.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from pipeline.executors.base import WorkerResources, auto_threads, resolve
from pipeline.executors.ray_runtime import init_ray, train_scaling, worker_device, worker_env


class RayContext:
    """A Ray Train worker's view: rank and world from Ray Train, gradients averaged with ``torch.distributed``."""

    def __init__(self, use_gpu: bool) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = worker_device(use_gpu)

    def average_gradients(self, module: nn.Module) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_parameters(self, module: nn.Module) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for p in module.parameters():
            dist.broadcast(p.data, src=0)

    def max_divergence(self, module: nn.Module) -> float:
        if self.world_size == 1:
            return 0.0
        import torch.distributed as dist

        from mid_core.training import param_fingerprint

        mine = param_fingerprint(module)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        return float(max((g - mine).abs().max() for g in gathered))

    def store_blocks(self) -> Iterator[dict[str, np.ndarray]]:
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        for batch in shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            yield {k: np.array(v) for k, v in batch.items()}  # writable copies

    def report(self, metrics: Mapping[str, Any]) -> None:
        import ray.train

        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})


def _data_context() -> Any:
    """Ray Data's context for this driver: its own progress output off (the stage shows one tqdm bar per store),
    blocks delivered in order (the training stage plans the order)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    return ctx


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train's loop function: build the worker context and call the stage's training function."""
    meta = loop_config["_executor"]
    torch.set_num_threads(auto_threads(meta["torch_threads"], meta["workers"]))
    resolve(meta["fn"])(RayContext(meta["use_gpu"]), loop_config)


class RayExecutor:
    """See the module docstring."""

    name = "ray"

    def generate(self, generator_kwargs: dict[str, Any], blocks: list[int], *, actors: int, actor_cpus: float,
                 actor_gpus: float, label: str) -> None:
        import ray
        from tqdm import tqdm

        from pipeline.stages.pool import BlockGenerator

        init_ray()
        _data_context()
        actors = max(1, min(actors, len(blocks)))
        ds = ray.data.from_items([{"block": b} for b in blocks], override_num_blocks=len(blocks))
        kwargs = {**generator_kwargs, "device": "cuda" if actor_gpus > 0 else "cpu",
                  "num_threads": auto_threads(0, actors)}
        results = ds.map_batches(
            BlockGenerator, fn_constructor_kwargs=kwargs, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus, num_gpus=actor_gpus or None,
            runtime_env={"env_vars": worker_env()},
        )
        with tqdm(total=len(blocks), desc=f"generate {label}", unit="block") as bar:
            for _row in results.iter_rows():
                bar.update(1)

    def train(self, fn: str, loop_config: dict[str, Any], resources: WorkerResources, *, name: str,
              store: str | None = None, block_order: list[int] | None = None, max_failures: int = 0) -> None:
        from ray.train import FailureConfig, RunConfig
        from ray.train.torch import TorchTrainer

        from pipeline.executors.ray_datasource import read_store

        init_ray()
        datasets = {}
        if store is not None:
            _data_context()
            datasets["train"] = read_store(store, block_order)
        scaling, torch_config = train_scaling(resources.workers, resources.cpus, resources.use_gpu)
        meta = {"fn": fn, "use_gpu": resources.use_gpu, "torch_threads": resources.torch_threads,
                "workers": resources.workers}
        storage = Path(loop_config["ray_results"])
        trainer = TorchTrainer(
            _train_loop, train_loop_config={**loop_config, "_executor": meta},
            scaling_config=scaling, torch_config=torch_config, datasets=datasets,
            # a fresh name per call: resuming is the stage's job (its own state files), never Ray Train's
            run_config=RunConfig(name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=str(storage), failure_config=FailureConfig(max_failures=max_failures),
                                 worker_runtime_env={"env_vars": worker_env()}),
        )
        trainer.fit()


__all__ = ["RayContext", "RayExecutor"]
