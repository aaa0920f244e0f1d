"""Helpers of the generation benchmarks: the plain-loop baseline, block completion times, store comparison."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import _common as C


def setup_teacher_and_config(tmp: str | os.PathLike, rows: int, steps: int, step_size: float | None, threads: int,
                             num_actors: int = 1, actor_cpus: float = 0.5, seed: int = 0,
                             teacher_rows: int = 4000, teacher_epochs: int = 1) -> tuple[Any, dict[str, Any]]:
    """Train a quick lenet5_classic teacher into ``<tmp>/models/teacher.pt`` and build the pool config."""
    t0 = time.perf_counter()
    _, acc = C.train_teacher_quick(tmp, "lenet5_classic", n=teacher_rows, epochs=teacher_epochs, seed=seed)
    cfg = C.bench_config(tmp, rows=rows, steps=steps, step_size=step_size, num_actors=num_actors,
                         actor_cpus=actor_cpus, torch_threads=threads)
    info = {"teacher_test_accuracy": acc, "teacher_train_seconds": time.perf_counter() - t0,
            "teacher_rows": teacher_rows, "teacher_epochs": teacher_epochs}
    print(f"teacher: lenet5_classic, {teacher_rows} MNIST images x {teacher_epochs} epoch(s), test accuracy {acc:.3f} "
          f"({info['teacher_train_seconds']:.1f}s)", flush=True)
    return cfg, info


def generate_with_ray(cfg: Any, path: Path) -> dict[str, Any]:
    """``pipeline.stages.pool.generate_store`` on the Ray executor (actors, Zarr writes, finalize), training split."""
    from pipeline.executors import get_executor
    from pipeline.paths import ExperimentPaths
    from pipeline.stages.pool import generate_store

    t0 = time.perf_counter()
    with C.CpuTracker("MapWorker", 0.5) as cpu:
        generate_store(cfg, get_executor("ray"), str(path), "train", cfg.pool.attacks, cfg.pool.eps, cfg.pool.steps,
                       cfg.pool.step_size, cfg.data.train_limit, ExperimentPaths.of(cfg).model("teacher"), "teacher",
                       cfg.seed, {"role": "bench"})
    wall = time.perf_counter() - t0
    done = block_completion_times(path)
    out = {"seconds": wall, "blocks": len(done), "first_block_done_after": done[0] - t0 if done else None}
    if len(done) >= 2:
        out["steady_blocks_per_second"] = (len(done) - 1) / (done[-1] - done[0])
        # CPU seconds in the steady window: the actors' (per block) and the driver's (Ray Data executor, polling)
        window = cpu.between(done[0], done[-1])
        out["actor_cpu_seconds_per_block"] = window["matched_cpu_seconds"] / (len(done) - 1)
        out["driver_cpu_share_steady"] = window["driver_cpu_seconds"] / window["wall_seconds"]
        out["actor_cpu_share_steady"] = window["matched_cpu_seconds"] / window["wall_seconds"]
    # fixed cost (actor start-up, Ray Data planning, finalize) = wall - blocks / steady rate
    out["fixed_seconds"] = wall - len(done) / out["steady_blocks_per_second"] if len(done) >= 2 else None
    return out


def block_completion_times(path: Path) -> list[float]:
    """When each block was finished: the mtime of its ``block_done`` chunk, which is written last per block."""
    chunks = Path(path) / "block_done" / "c"
    times = sorted(f.stat().st_mtime for f in chunks.iterdir() if f.is_file())
    # perf_counter and wall clock differ by an offset; convert mtimes to the perf_counter time base
    offset = time.time() - time.perf_counter()
    return [t - offset for t in times]


class PlainLoop:
    """The baseline: the same attacks on the same images with the same seeds, in a plain PyTorch loop in this
    process, writing uint8 NumPy arrays (no Ray, no Zarr, no success scoring)."""

    def __init__(self, cfg: Any, threads: int) -> None:
        from mid_core.attacks import AttackSpec
        from mid_core.checkpoint import load_classifier
        from mid_core.datasets import load_dataset
        from pipeline.paths import ExperimentPaths
        from pipeline.stages.pool import attack_specs

        self.cfg, self.threads = cfg, threads
        self.model = load_classifier(ExperimentPaths.of(cfg).model("teacher"))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.data = load_dataset(cfg.data.dataset, "train", cfg.data.root).subset(cfg.data.train_limit)
        specs = attack_specs(cfg.pool.attacks, cfg.pool.eps, cfg.pool.steps, cfg.pool.step_size)
        self.specs = {n: AttackSpec.from_dict(s.to_dict()) for n, s in specs.items()}

    def run(self) -> dict[str, Any]:
        from mid_core.attacks import run_attack
        from mid_core.quantize import quantize_adversarial
        from pipeline.stages.pool import SLOW_KINDS, attack_seed

        torch.set_num_threads(self.threads)
        n, bs = len(self.data), self.cfg.pool.block_size
        images, labels = self.data.images, self.data.labels
        adv = {a: np.zeros((n, *images.shape[1:]), dtype=np.uint8) for a in self.specs}
        targets = {a: np.full(n, -1, dtype=np.int64) for a, s in self.specs.items() if s.targeted}
        t0 = time.perf_counter()
        block_seconds, block_cpu = [], []
        for block, start in enumerate(range(0, n, bs)):
            tb, cb = time.perf_counter(), time.process_time()
            stop = min(start + bs, n)
            for index, (name, spec) in enumerate(self.specs.items()):
                gen = torch.Generator().manual_seed(attack_seed(self.cfg.seed, block, name))
                for i in range(start, stop, self.cfg.pool.batch_size):
                    j = min(i + self.cfg.pool.batch_size, stop)
                    out = run_attack(spec, self.model, images[i:j], labels[i:j], num_classes=10, generator=gen)
                    eps = spec.eps if spec.norm == "linf" and spec.kind not in SLOW_KINDS else None
                    adv[name][i:j] = quantize_adversarial(out.adversarial, images[i:j], eps).numpy()
                    if out.targets is not None:
                        targets[name][i:j] = out.targets.numpy()
            block_seconds.append(time.perf_counter() - tb)
            block_cpu.append(time.process_time() - cb)
        wall = time.perf_counter() - t0
        self.last = {"adv": adv, "targets": targets}
        return {"seconds": wall, "blocks": len(block_seconds), "median_block_seconds": C.median(block_seconds),
                "steady_blocks_per_second": 1 / C.median(block_seconds), "cpu_seconds_per_block": C.median(block_cpu)}


def store_equals_arrays(path: Path, adv: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> bool:
    from storage_schemas import open_store

    store = open_store(path, require_complete=True)
    rows = store.read_rows(0, store.num_rows)
    ok = all(np.array_equal(rows[f"adv/{a}"], v) for a, v in adv.items())
    return ok and all(np.array_equal(rows[f"target/{a}"], t) for a, t in targets.items())


def stores_identical(a: Path, b: Path) -> dict[str, Any]:
    """Compare every data array and the per-block success counts of two stores."""
    from storage_schemas import open_store

    sa, sb = open_store(a, require_complete=True), open_store(b, require_complete=True)
    ra, rb = sa.read_rows(0, sa.num_rows), sb.read_rows(0, sb.num_rows)
    arrays = {k: bool(np.array_equal(ra[k], rb[k])) for k in ra}
    counts = bool(np.array_equal(np.asarray(sa._read("success_count", slice(None))),
                                 np.asarray(sb._read("success_count", slice(None)))))
    return {"identical": all(arrays.values()) and counts and set(ra) == set(rb), "arrays": arrays,
            "success_counts_equal": counts, "success_rates": sa.success_rates()}
