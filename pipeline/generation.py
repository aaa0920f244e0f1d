"""Stage 2: pregenerate the adversarial pool (and the ``paper`` protocol's fixed test sets) into Zarr.

Ray Data drives it: one row per pending store block -> ``map_batches`` over a pool of stateful
``BlockGenerator`` actors, each of which loads the frozen source model and the data split once, runs every
pool attack on its block, quantises to 8 bits inside the eps ball, measures the attack's success on the
source model after quantisation, and writes the whole block (one Zarr chunk per array) into the store.
Writers own whole chunks, so no locks are needed; a block is marked done only after its data is written,
so rerunning the job after a crash resumes from the completion record. Every block's randomness (random
starts, random targets) is seeded from (seed, block, attack), so the store does not depend on how many
actors ran or in which order.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.config import ExperimentConfig
from pipeline.paths import ExperimentPaths
from pipeline.ray_runtime import auto_threads, init_ray, worker_env

SLOW_KINDS = ("cw", "jsma")


def attack_specs(names: list[str], eps: float, steps: int | None, step_size: float | None = None) -> dict[str, Any]:
    """name -> AttackSpec with the config's eps applied, and its steps / step-size overrides applied to the
    iterative L-inf attacks (PGD, MIM, BIM); FGSM stays one step of eps, CW/JSMA keep their own budgets."""
    from mid_core.attacks import default_spec

    specs = {}
    for name in names:
        overrides: dict[str, Any] = {"eps": eps}
        if name.split("_")[0] in ("PGD", "MIM", "BIM"):
            if steps is not None:
                overrides["steps"] = steps
            if step_size is not None:
                overrides["step_size"] = step_size
        specs[name] = default_spec(name, **overrides)
    return specs


def store_eps(spec: Any) -> float | None:
    """The L-inf radius an attack's 8-bit stored images are clipped to (``quantize_adversarial``), or ``None`` for
    CW and JSMA (no L-inf bound: plain rounding)."""
    return spec.eps if spec.norm == "linf" and spec.kind not in SLOW_KINDS else None


def block_seed(seed: int, block: int, attack_index: int) -> int:
    """Deterministic seed of one (block, attack) cell of the store."""
    digest = hashlib.sha256(f"{seed}:{block}:{attack_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


FAULT_BLOCK_ENV = "MID_FAULT_KILL_AT_BLOCK"
FAULT_MARKER_ENV = "MID_FAULT_MARKER"


def _maybe_inject_fault(block: int) -> None:
    """Test hook: hard-kill this actor once, just before it writes block ``$MID_FAULT_KILL_AT_BLOCK``."""
    import os

    target, marker = os.environ.get(FAULT_BLOCK_ENV), os.environ.get(FAULT_MARKER_ENV)
    if target and marker and block == int(target) and not os.path.exists(marker):
        Path(marker).write_text(f"killed before writing block {block}\n")
        os._exit(1)


class BlockGenerator:
    """Ray Data actor: computes and writes whole store blocks against a frozen source model."""

    def __init__(self, store_path: str, source_checkpoint: str, dataset: str, split: str, data_root: str | None,
                 download: bool, limit: int | None, specs: Mapping[str, dict], seed: int, batch_size: int,
                 num_threads: int = 1, use_gpu: bool = False) -> None:
        from mid_core.attacks import AttackSpec
        from mid_core.checkpoint import load_classifier
        from mid_core.datasets import NUM_CLASSES, load_dataset
        from storage_schemas import open_store

        torch.set_num_threads(num_threads)
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU (pool.actor_gpus > 0), so it is cuda:0 here
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = load_classifier(source_checkpoint).to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.data = load_dataset(dataset, split, data_root, download).subset(limit)
        self.num_classes = NUM_CLASSES[dataset]
        self.specs = {name: AttackSpec.from_dict(d) for name, d in specs.items()}
        self.seed = seed
        self.batch_size = batch_size
        self.store = open_store(store_path, mode="r+")

    def generate_block(self, block: int) -> dict[str, Any]:
        """Attack, quantise and score one block; returns the arrays ``write_block`` takes."""
        from mid_core.attacks import run_attack
        from mid_core.evaluation import predict
        from mid_core.quantize import from_uint8, quantize_adversarial, to_uint8

        start, stop = self.store.block_range(block)
        images, labels = self.data.images[start:stop], self.data.labels[start:stop]
        adversarial, targets, success = {}, {}, {}
        for index, (name, spec) in enumerate(self.specs.items()):
            generator = torch.Generator().manual_seed(block_seed(self.seed, block, index))
            adv_parts, target_parts = [], []
            for i in range(0, len(labels), self.batch_size):
                x, y = images[i:i + self.batch_size], labels[i:i + self.batch_size]
                out = run_attack(spec, self.model, x.to(self.device), y.to(self.device), num_classes=self.num_classes,
                                 generator=generator)
                adv_parts.append(quantize_adversarial(out.adversarial.cpu(), x, store_eps(spec)))
                if out.targets is not None:
                    target_parts.append(out.targets.cpu())
            adv_u8 = torch.cat(adv_parts)
            preds = predict(self.model, from_uint8(adv_u8))
            if spec.targeted:
                tgt = torch.cat(target_parts)
                targets[name] = tgt.numpy().astype(np.int64)
                success[name] = int((preds == tgt).sum())
            else:
                success[name] = int((preds != labels).sum())
            adversarial[name] = adv_u8.numpy()
        return {"clean": to_uint8(images).numpy(), "labels": labels.numpy().astype(np.int64),
                "adversarial": adversarial, "targets": targets, "success_counts": success}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blocks, seconds = [], []
        for block in batch["block"].tolist():
            t0 = time.perf_counter()
            arrays = self.generate_block(int(block))
            _maybe_inject_fault(int(block))
            self.store.write_block(int(block), **arrays)
            blocks.append(int(block))
            seconds.append(time.perf_counter() - t0)
        return {"block": np.array(blocks), "seconds": np.array(seconds)}


def source_checkpoint(cfg: ExperimentConfig) -> Path:
    """The model the pool is generated against: the teacher, or the separate standard classifier."""
    return ExperimentPaths.of(cfg).model("teacher" if cfg.pool.source == "teacher" else "standard")


def checkpoint_fingerprint(path: Path) -> str:
    from mid_core.checkpoint import read_checkpoint
    from storage_schemas import state_dict_fingerprint

    return state_dict_fingerprint(read_checkpoint(path)["state_dict"])


def pool_id(attrs: Mapping[str, Any]) -> str:
    """Short content id of a pool: what was attacked, how, and against which model."""
    keys = ("dataset", "split", "num_rows", "attacks", "source_fingerprint", "seed")
    return hashlib.sha256(json.dumps({k: attrs.get(k) for k in keys}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def store_block_size(path: Path, num_rows: int, block_size: int, actors: int) -> int:
    """Rows per block (= per Zarr chunk = per actor task) for the store at ``path``.

    A store that already exists keeps its own block size, so an interrupted or finished job resumes it unchanged.
    A new one uses ``block_size`` (``pool.block_size``), split further when that would leave actors idle: 50 test
    images for CW and JSMA (seconds per image) become two blocks of 25 on two actors instead of one block that a
    single actor works through while the other waits. (Targets and random starts are seeded per block, so a store's
    content depends on its block size: another reason an existing store keeps its own.)
    """
    from storage_schemas import StoreError, open_store

    try:
        return int(open_store(path).attrs["block_size"])
    except StoreError:  # no store there yet (or an unreadable one, which create_store recreates or reports)
        pass
    if math.ceil(num_rows / block_size) >= actors:
        return block_size
    return max(1, math.ceil(num_rows / max(1, actors)))


def generate_store(cfg: ExperimentConfig, path: Path, split: str, attack_names: list[str], eps: float,
                   steps: int | None, step_size: float | None, limit: int | None,
                   extra_attrs: Mapping[str, Any] | None = None, source: Path | None = None,
                   source_role: str | None = None, seed: int | None = None) -> Any:
    """Create (or resume) one store and fill every pending block through Ray Data actors.

    ``source`` / ``source_role`` default to the config's pool source (teacher or standard model); the pool
    refresh passes the current deployed MID model instead. ``seed`` defaults to the config's seed.
    """
    import ray
    from tqdm import tqdm

    from mid_core.datasets import IMAGE_SHAPES, load_dataset
    from storage_schemas import create_store

    num_rows = len(load_dataset(cfg.data.dataset, split, cfg.data.root, cfg.data.download).subset(limit))
    specs = attack_specs(attack_names, eps, steps, step_size)
    source = source or source_checkpoint(cfg)
    seed = cfg.seed if seed is None else seed
    if not source.exists():
        raise FileNotFoundError(f"source model {source} not found: run jobs/train_teacher.py with this config first")
    teacher_fp = checkpoint_fingerprint(ExperimentPaths.of(cfg).model("teacher"))
    store = create_store(
        path, dataset=cfg.data.dataset, split=split, num_rows=num_rows, image_shape=IMAGE_SHAPES[cfg.data.dataset],
        attacks={n: s.to_dict() for n, s in specs.items()}, source_fingerprint=checkpoint_fingerprint(source),
        source_arch=cfg.model.backbone, seed=seed,
        block_size=store_block_size(path, num_rows, cfg.pool.block_size, cfg.pool.num_actors),
        extra_attrs={"source_role": source_role or cfg.pool.source, "teacher_fingerprint": teacher_fp, "limit": limit,
                     "config_name": cfg.name, **dict(extra_attrs or {})},
    )
    pending = store.pending_blocks()
    print(f"[pool] {path.name}: {store.num_rows} rows, {store.num_blocks} blocks, {len(pending)} to generate, "
          f"attacks {list(specs)}", flush=True)
    if pending:
        actors = max(1, min(cfg.pool.num_actors, len(pending)))
        ds = ray.data.from_items([{"block": b} for b in pending], override_num_blocks=len(pending))
        results = ds.map_batches(
            BlockGenerator,
            fn_constructor_kwargs={
                "store_path": str(path), "source_checkpoint": str(source), "dataset": cfg.data.dataset, "split": split,
                "data_root": cfg.data.root, "download": cfg.data.download, "limit": limit,
                "specs": {n: s.to_dict() for n, s in specs.items()}, "seed": seed, "batch_size": cfg.pool.batch_size,
                "num_threads": auto_threads(cfg.pool.torch_threads, actors), "use_gpu": cfg.pool.actor_gpus > 0,
            },
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cfg.pool.actor_cpus,
            num_gpus=cfg.pool.actor_gpus or None,
            # Ray Data restarts a dead actor and retries its block (max_restarts=-1 by default for actor
            # pools; Python exceptions are not retried). Blocks are idempotent: a rewrite writes the same bytes.
            runtime_env={"env_vars": worker_env()},
        )
        with tqdm(total=len(pending), desc=f"generate {path.name}", unit="block") as bar:
            for _row in results.iter_rows():
                bar.update(1)
    store = _reopen(path)
    if not store.attrs.get("complete"):
        store.finalize({"pool_id": pool_id(store.attrs)})
    return store


def _reopen(path: Path) -> Any:
    from storage_schemas import open_store

    return open_store(path, mode="r+")


def run(cfg: ExperimentConfig, write_test: bool = True) -> dict[str, Path]:
    """Generate the training pool and, with ``write_test``, the paper protocol's test stores."""
    import mlflow

    from pipeline.tracking import stage_run

    paths = ExperimentPaths.of(cfg)
    init_ray()
    written: dict[str, Path] = {}
    with stage_run(cfg, "pool", method="pool", extra_tags={"pool_source": cfg.pool.source}):
        t0 = time.perf_counter()
        store = generate_store(cfg, paths.train_pool, "train", cfg.pool.attacks, cfg.pool.eps, cfg.pool.steps,
                               cfg.pool.step_size, cfg.data.train_limit, {"role": "train_pool"})
        written["train_pool"] = paths.train_pool
        mlflow.set_tag("pool_id", store.attrs["pool_id"])
        mlflow.log_metrics({f"pool_success_rate/{k}": v for k, v in store.success_rates().items()})
        mlflow.log_metric("pool_seconds", time.perf_counter() - t0)
        if write_test and "paper" in cfg.evaluation.protocols:
            fast = [a for a in cfg.evaluation.attacks if not a.startswith(("CW", "JSMA"))]
            slow = [a for a in cfg.evaluation.attacks if a.startswith(("CW", "JSMA"))]
            for names, is_slow, limit in ((fast, False, cfg.evaluation.limit),
                                          (slow, True, min(cfg.evaluation.limit or 10**9, cfg.evaluation.slow_attack_limit))):
                if not names:
                    continue
                t1 = time.perf_counter()
                test_store = generate_store(cfg, paths.paper_test(is_slow), "test", names, cfg.evaluation.eps,
                                            cfg.evaluation.steps, cfg.evaluation.step_size, limit, {"role": "paper_test"})
                written[paths.paper_test(is_slow).name] = paths.paper_test(is_slow)
                mlflow.log_metrics({f"test_success_rate/{k}": v for k, v in test_store.success_rates().items()})
                mlflow.log_metric(f"test_store_seconds{'_slow' if is_slow else ''}", time.perf_counter() - t1)
        for p in written.values():
            summary = p.parent / f"{p.stem}_summary.txt"
            summary.write_text(_reopen(p).summary())
            mlflow.log_artifact(str(summary), artifact_path="stores")
    return written
