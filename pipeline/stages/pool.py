"""Stage 2: the adversarial training pool and the fixed test sets, as adversarial stores.

For every image of a split and every attack, the adversarial view against a frozen *source* model, quantised to 8
bits inside the eps ball (a real attacker delivers valid 8-bit images), written block by block into a store
(``storage_schemas``) with the attack's success rate on the source model after quantisation:

* ``stores/pool_train``: ``pool.attacks`` on the training split against the pool's source model (teacher or
  standard classifier); MID trains on it;
* ``stores/paper_test[_slow]``: the evaluation attacks on the test split against the same source model: the
  ``paper`` protocol (CW and JSMA on the first ``evaluation.slow_attack_limit`` images, in the ``_slow`` store);
* ``stores/transfer_test[_slow]``: the same against the independently trained substitute: the ``transfer``
  protocol.

Every (block, attack) cell's randomness (random starts, random targets) comes from ``attack_seed(seed, block,
attack)``, so a store does not depend on the executor, the number of actors or their order, and an attack gets the
same draws in every pool it is part of. A block is written whole and marked done last, so rerunning after a crash
generates only the missing blocks, and a finished store is immutable.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.executors.base import Executor
from pipeline.paths import ExperimentPaths
from pipeline.stages.common import checkpoint_fingerprint, pool_source_role, require_model

log = logging.getLogger(__name__)

SLOW_KINDS = ("cw", "jsma")


def attack_specs(names: list[str], eps: float, steps: int | None, step_size: float | None = None,
                 norm_eps: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """name -> AttackSpec with the config's eps applied, and its steps / step-size overrides applied to the
    iterative L-inf attacks (PGD, MIM, BIM); FGSM stays one step of eps, CW/JSMA keep their own budgets.

    ``eps`` is an L-inf radius: attacks in another norm (``AAL2_N``, ``APGDL1_N``, ``DDN_N``) take theirs from
    ``norm_eps`` (norm -> radius, e.g. ``{"l2": 1.5}``) or keep their defaults where it has none."""
    from mid_core.attacks import default_spec

    specs = {}
    for name in names:
        default = default_spec(name)
        if default.norm in ("l2", "l1") and default.budget_eps is not None:
            radius = (norm_eps or {}).get(default.norm)
            overrides: dict[str, Any] = {"eps": radius} if radius is not None else {}
        else:
            overrides = {"eps": eps}
        if name.split("_")[0] in ("PGD", "MIM", "BIM"):
            if steps is not None:
                overrides["steps"] = steps
            if step_size is not None:
                overrides["step_size"] = step_size
        specs[name] = default_spec(name, **overrides)
    return specs


def is_slow(name: str) -> bool:
    """CW and JSMA: seconds per image, so they run on a smaller test subset."""
    return name.startswith(("CW", "JSMA"))


def store_eps(spec: Any) -> float | None:
    """The L-inf radius an attack's 8-bit images are clipped to (``quantize_adversarial``), or ``None`` for CW and
    JSMA (no L-inf bound: plain rounding)."""
    return spec.eps if spec.norm == "linf" and spec.kind not in SLOW_KINDS else None


def attack_seed(seed: int, block: int, attack: str) -> int:
    """The seed of one (block, attack) cell: a hash of (seed, block, the attack's place in the paper's column order),
    so an attack draws the same in every pool it is part of."""
    from mid_core.attacks import PAPER_COLUMNS

    index = PAPER_COLUMNS.index(attack) if attack in PAPER_COLUMNS else 100 + sum(map(ord, attack))
    digest = hashlib.sha256(f"{seed}:{block}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def attack_views(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, specs: Mapping[str, Any],
                 seed: int, block: int, batch_size: int, num_classes: int) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, torch.Tensor]]:
    """The 8-bit adversarial views of one block of images against ``model``.

    ``images`` float ``(n, C, H, W)`` in [0, 1] and ``labels`` ``(n,)`` on the model's device. Returns
    (name -> uint8 ``(n, C, H, W)`` on the CPU, name -> int64 target labels ``(n,)`` for targeted attacks). Each
    attack draws from its own generator seeded with ``attack_seed(seed, block, name)``, in batches of ``batch_size``.
    """
    from mid_core.attacks import run_attack
    from mid_core.quantize import quantize_adversarial

    views, targets = {}, {}
    for name, spec in specs.items():
        generator = torch.Generator().manual_seed(attack_seed(seed, block, name))
        adv_parts, target_parts = [], []
        for i in range(0, labels.shape[0], batch_size):
            x, y = images[i:i + batch_size], labels[i:i + batch_size]
            out = run_attack(spec, model, x, y, num_classes=num_classes, generator=generator)
            adv_parts.append(quantize_adversarial(out.adversarial, x, store_eps(spec)).cpu())
            if out.targets is not None:
                target_parts.append(out.targets.cpu())
        views[name] = torch.cat(adv_parts)
        if target_parts:
            targets[name] = torch.cat(target_parts)
    return views, targets


FAULT_BLOCK_ENV = "MID_FAULT_KILL_AT_BLOCK"
FAULT_MARKER_ENV = "MID_FAULT_MARKER"


def _maybe_inject_fault(block: int) -> None:
    """Test hook: hard-kill this process once, just before it writes block ``$MID_FAULT_KILL_AT_BLOCK``."""
    target, marker = os.environ.get(FAULT_BLOCK_ENV), os.environ.get(FAULT_MARKER_ENV)
    if target and marker and block == int(target) and not os.path.exists(marker):
        Path(marker).write_text(f"killed before writing block {block}\n")
        os._exit(1)


class BlockGenerator:
    """Computes and writes whole store blocks against a frozen source model (a Ray Data actor, or a plain object
    in one process)."""

    def __init__(self, store_path: str, source_checkpoint: str, dataset: str, split: str, data_root: str | None,
                 download: bool, limit: int | None, specs: Mapping[str, dict], seed: int, batch_size: int,
                 num_threads: int = 1, device: str = "cpu") -> None:
        from mid_core.attacks import AttackSpec
        from mid_core.checkpoint import load_classifier
        from mid_core.datasets import NUM_CLASSES, load_dataset
        from pipeline import logs
        from storage_schemas import open_store

        logs.configure()
        torch.set_num_threads(num_threads)
        # with Ray, CUDA_VISIBLE_DEVICES holds this actor's GPU, so it is cuda:0 here
        self.device = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
        self.model = load_classifier(source_checkpoint).to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.data = load_dataset(dataset, split, data_root, download).subset(limit)
        self.num_classes = NUM_CLASSES[dataset]
        self.specs = {name: AttackSpec.from_dict(d) for name, d in specs.items()}
        self.seed, self.batch_size = seed, batch_size
        self.store = open_store(store_path, mode="r+")

    def generate_block(self, block: int) -> dict[str, Any]:
        """Attack, quantise and score one block; returns the arrays ``write_block`` takes."""
        from mid_core.evaluation import predict
        from mid_core.quantize import from_uint8, to_uint8

        start, stop = self.store.block_range(block)
        images, labels = self.data.images[start:stop], self.data.labels[start:stop]
        views, targets = attack_views(self.model, images.to(self.device), labels.to(self.device), self.specs,
                                      self.seed, block, self.batch_size, self.num_classes)
        success = {}
        for name, spec in self.specs.items():
            preds = predict(self.model, from_uint8(views[name]))
            hit = preds == targets[name] if spec.targeted else preds != labels
            success[name] = int(hit.sum())
        return {"clean": to_uint8(images).numpy(), "labels": labels.numpy().astype(np.int64),
                "adversarial": {n: v.numpy() for n, v in views.items()},
                "targets": {n: t.numpy().astype(np.int64) for n, t in targets.items()}, "success_counts": success}

    def write(self, block: int) -> None:
        arrays = self.generate_block(block)
        _maybe_inject_fault(block)
        self.store.write_block(block, **arrays)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data's ``map_batches`` entry: write each block of the batch."""
        blocks, seconds = [], []
        for block in batch["block"].tolist():
            t0 = time.perf_counter()
            self.write(int(block))
            blocks.append(int(block))
            seconds.append(time.perf_counter() - t0)
        return {"block": np.array(blocks), "seconds": np.array(seconds)}


def pool_id(attrs: Mapping[str, Any]) -> str:
    """Short content id of a store: what was attacked, how, and against which model."""
    keys = ("dataset", "split", "num_rows", "attacks", "source_fingerprint", "seed")
    return hashlib.sha256(json.dumps({k: attrs.get(k) for k in keys}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def store_block_size(path: str, num_rows: int, block_size: int, actors: int) -> int:
    """Rows per block (= per Zarr chunk = per generation task) for the store at ``path``.

    An existing store keeps its own block size, so an interrupted or finished job resumes it unchanged. A new one
    uses ``block_size`` (``pool.block_size``), split further when that would leave actors idle (50 test images for
    CW and JSMA become two blocks of 25 on two actors). Randomness is drawn per block, so a store's content depends
    on its block size: another reason an existing store keeps its own.
    """
    from storage_schemas import StoreError, open_store

    try:
        return int(open_store(path).attrs["block_size"])
    except StoreError:  # no store there yet (or an unreadable one, which create_store recreates or reports)
        pass
    if math.ceil(num_rows / block_size) >= actors:
        return block_size
    return max(1, math.ceil(num_rows / max(1, actors)))


def generate_store(cfg: ExperimentConfig, executor: Executor, path: str, split: str, attack_names: list[str],
                   eps: float, steps: int | None, step_size: float | None, limit: int | None, source: Path,
                   source_role: str, seed: int, extra_attrs: Mapping[str, Any] | None = None) -> Any:
    """Create (or resume) one store and fill every pending block through ``executor``; returns it finalized."""
    from mid_core.datasets import IMAGE_SHAPES, load_dataset
    from storage_schemas import StoreError, create_store, open_store

    num_rows = len(load_dataset(cfg.data.dataset, split, cfg.data.root, cfg.data.download).subset(limit))
    specs = attack_specs(attack_names, eps, steps, step_size)
    teacher_fp = checkpoint_fingerprint(require_model(cfg, "teacher"))
    try:
        store = create_store(
            path, dataset=cfg.data.dataset, split=split, num_rows=num_rows, image_shape=IMAGE_SHAPES[cfg.data.dataset],
            attacks={n: s.to_dict() for n, s in specs.items()}, source_fingerprint=checkpoint_fingerprint(source),
            source_arch=cfg.model.backbone, seed=seed,
            block_size=store_block_size(path, num_rows, cfg.pool.block_size, cfg.pool.num_actors),
            extra_attrs={"source_role": source_role, "teacher_fingerprint": teacher_fp, "limit": limit,
                         "config_name": cfg.name, **dict(extra_attrs or {})},
        )
    except StoreError as exc:
        raise UserError(f"{exc} (To regenerate it for this config, delete {path} and rerun.)") from None
    pending = store.pending_blocks()
    log.info("%s: %d rows, %d blocks, %d to generate, attacks %s against %s", Path(path).name, store.num_rows,
             store.num_blocks, len(pending), list(specs), source_role)
    if pending:
        kwargs = {"store_path": path, "source_checkpoint": str(source), "dataset": cfg.data.dataset, "split": split,
                  "data_root": cfg.data.root, "download": cfg.data.download, "limit": limit,
                  "specs": {n: s.to_dict() for n, s in specs.items()}, "seed": seed, "batch_size": cfg.pool.batch_size}
        executor.generate(kwargs, pending, actors=cfg.pool.num_actors, actor_cpus=cfg.pool.actor_cpus,
                          actor_gpus=cfg.pool.actor_gpus, label=Path(path).name)
    store = open_store(path, mode="r+")
    if not store.attrs.get("complete"):
        store.finalize({"pool_id": pool_id(store.attrs)})
    return store


def test_store_limits(cfg: ExperimentConfig, n_test: int) -> tuple[int, int]:
    """(images of the fast attacks' test sets, images of CW/JSMA's): ``evaluation.limit`` and
    ``evaluation.slow_attack_limit`` capped by the test split."""
    base = min(cfg.evaluation.limit or n_test, n_test)
    return base, min(base, cfg.evaluation.slow_attack_limit)


TEST_SOURCES = {"paper": None, "transfer": "substitute"}  # protocol -> source role (None: the pool's source)


def generate_test_stores(cfg: ExperimentConfig, executor: Executor, run_: Any = None) -> dict[str, str]:
    """The fixed test sets of the ``paper`` and ``transfer`` protocols the config evaluates; name -> path."""
    from mid_core.datasets import load_dataset

    paths = ExperimentPaths.of(cfg)
    n_test = len(load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download))
    base, slow_n = test_store_limits(cfg, n_test)
    written = {}
    for protocol, role in TEST_SOURCES.items():
        if protocol not in cfg.evaluation.protocols:
            continue
        role = role or pool_source_role(cfg)
        for slow in (False, True):
            names = [a for a in cfg.evaluation.attacks if is_slow(a) == slow]
            if not names:
                continue
            t0 = time.perf_counter()
            path = paths.test_store(protocol, slow)
            store = generate_store(cfg, executor, path, "test", names, cfg.evaluation.eps, cfg.evaluation.steps,
                                   cfg.evaluation.step_size, slow_n if slow else base, require_model(cfg, role), role,
                                   cfg.seed, {"role": f"{protocol}_test"})
            written[Path(path).stem] = path
            if run_ is not None:
                run_.log_metrics({f"{protocol}_test_success_rate/{k}": v for k, v in store.success_rates().items()})
                run_.log_metrics({f"{Path(path).stem}_seconds": time.perf_counter() - t0})
    return written


def run(cfg: ExperimentConfig, executor: Executor, write_test: bool = True) -> dict[str, str]:
    """Generate the training pool and, with ``write_test``, the fixed test sets; name -> store path."""
    from storage_schemas import open_store

    from pipeline.tracking import stage_run

    paths = ExperimentPaths.of(cfg)
    source = require_model(cfg, pool_source_role(cfg))
    with stage_run(cfg, "pool", method="pool", extra_tags={"pool_source": cfg.pool.source}) as run_:
        t0 = time.perf_counter()
        store = generate_store(cfg, executor, paths.train_pool, "train", cfg.pool.attacks, cfg.pool.eps,
                               cfg.pool.steps, cfg.pool.step_size, cfg.data.train_limit, source, cfg.pool.source,
                               cfg.seed, {"role": "train_pool"})
        written = {"pool_train": paths.train_pool}
        run_.set_tag("pool_id", store.attrs["pool_id"])
        run_.log_metrics({f"pool_success_rate/{k}": v for k, v in store.success_rates().items()})
        run_.log_metrics({"pool_seconds": time.perf_counter() - t0})
        if write_test:
            written.update(generate_test_stores(cfg, executor, run_))
        if not paths.train_pool.startswith("mem://"):
            for name, path in written.items():
                summary = paths.stores / f"{name}_summary.txt"
                summary.write_text(open_store(path).summary())
                run_.log_artifact(summary, "stores")
    return written
