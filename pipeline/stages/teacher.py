"""Stage 1: the base models, each trained on clean (or, for AT, on PGD) data by one training function.

* ``teacher``: the autoencoder-classifier (E_t, C_t, D_t), cross-entropy + reconstruction; its decoder's R² is logged
  and a warning printed below 0.5 (the cyclic-consistency loss then has no gradient);
* ``substitute``: the same architecture with another seed, the source of the ``transfer`` protocol's attacks;
* ``standard``: a plain classifier E -> C, the pool's source model with ``pool.source: standard``;
* ``at``: Madry et al. PGD adversarial training of a standard classifier (the AT baseline);
* ``trades``: TRADES adversarial training of a standard classifier (``mid_core.trades``).

Each model is written to ``<output_dir>/models/<role>.pt`` (weights-only, with its config and metrics); a model
whose checkpoint exists is not retrained (delete it to retrain).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ExperimentConfig, config_from_dict
from pipeline.executors.base import Executor, WorkerContext, WorkerResources
from pipeline.paths import ExperimentPaths
from pipeline.stages.common import models_to_train
from pipeline.tracking import RunLogger, stage_run

log = logging.getLogger(__name__)


def train_worker(ctx: WorkerContext, loop_config: dict[str, Any]) -> None:
    """Training function: train each job of ``loop_config["jobs"]`` (role, seed, checkpoint) in turn."""
    cfg = config_from_dict(loop_config["config"], check_data=False)
    logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"], enabled=ctx.rank == 0)
    for job in loop_config["jobs"]:
        train_base_model(ctx, cfg, job["role"], int(job["seed"]), Path(job["checkpoint"]), logger)


def train_base_model(ctx: WorkerContext, cfg: ExperimentConfig, role: str, seed: int, checkpoint: Path,
                     logger: RunLogger) -> dict[str, float]:
    """Train one base model (role ``teacher`` | ``substitute`` | ``standard`` | ``at`` | ``trades``) on this worker's share of
    every batch, save it on rank 0, and return its final metrics."""
    from mid_core.attacks import default_spec, run_attack
    from mid_core.checkpoint import save_checkpoint
    from mid_core.datasets import NUM_CLASSES, load_dataset
    from mid_core.evaluation import accuracy
    from mid_core.models import StandardClassifier, Teacher, classifier_of
    from mid_core.trades import trades_epoch, trades_perturb
    from mid_core.training import (
        adversarial_epoch, classifier_epoch, decoder_warning, reconstruction_r2, shuffled_batches, teacher_epoch,
    )

    torch.manual_seed(seed)
    device = ctx.device
    train = load_dataset(cfg.data.dataset, "train", cfg.data.root, cfg.data.download).subset(cfg.data.train_limit)
    images, labels = train.images.to(device), train.labels.to(device)
    test = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download)
    test_images, test_labels = test.images.to(device), test.labels.to(device)
    in_ch, k = images.shape[1], NUM_CLASSES[cfg.data.dataset]
    teacher_like = role in ("teacher", "substitute")
    build = Teacher if teacher_like else StandardClassifier
    model = build.from_backbone(cfg.model.backbone, in_ch, k)
    if cfg.model.pretrained:
        from mid_core.backbones.vit import load_torchvision_weights

        load_torchvision_weights(model.encoder, model.classifier, cfg.model.pretrained)
    model = model.to(device)
    ctx.broadcast_parameters(model)
    robust = {"at": cfg.at, "trades": cfg.trades}.get(role)  # the adversarial-training section, if any
    epochs, batch_size, lr = (robust.epochs, robust.batch_size, robust.lr) if robust is not None else \
        (cfg.teacher.epochs, cfg.teacher.batch_size, cfg.teacher.lr)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)  # CPU generator: the permutation indexes device tensors alike
    attack_gen = torch.Generator().manual_seed(seed + 1 + ctx.rank)
    pgd = default_spec("PGD_N", eps=cfg.at.eps, steps=cfg.at.steps, step_size=cfg.at.step_size, rand_init=True)

    def madry_pgd(target: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return run_attack(pgd, target, x, y, num_classes=k, generator=attack_gen).adversarial

    def trades_view(target: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        t = cfg.trades
        return trades_perturb(target, x, t.eps, t.steps, t.step_size, generator=attack_gen)

    as_classifier = classifier_of(model) if teacher_like else model
    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        t0 = time.perf_counter()
        batches = shuffled_batches(images, labels, batch_size, order_gen, ctx.rank, ctx.world_size)
        if role == "at":
            metrics = adversarial_epoch(model, batches, optimizer, madry_pgd, ctx.average_gradients)
        elif role == "trades":
            metrics = trades_epoch(model, batches, optimizer, trades_view, cfg.trades.beta, ctx.average_gradients)
        elif teacher_like:
            metrics = teacher_epoch(model, batches, optimizer, cfg.teacher.recon_loss, cfg.teacher.recon_weight,
                                    ctx.average_gradients)
        else:
            metrics = classifier_epoch(model, batches, optimizer, average_gradients=ctx.average_gradients)
        metrics["test_accuracy"] = accuracy(as_classifier, test_images, test_labels)
        if teacher_like and model.decoder is not None:
            metrics["recon_r2"] = reconstruction_r2(model, test_images)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        logger.log({f"{role}/{name}": value for name, value in metrics.items()}, step=epoch)
        if ctx.rank == 0:
            log.info("%s epoch %d/%d %s", role, epoch + 1, epochs, " ".join(f"{n}={v:.4f}" for n, v in metrics.items()))
    if ctx.rank == 0:
        warning = decoder_warning(metrics["recon_r2"]) if role == "teacher" and "recon_r2" in metrics else None
        if warning:
            log.warning("%s: %s", role, warning)
        save_checkpoint(checkpoint, model, kind="teacher" if teacher_like else "standard", backbone=cfg.model.backbone,
                        config=cfg.to_dict(), metrics={**metrics, "seed": seed}, in_channels=in_ch, num_classes=k)
    ctx.report({"role": role, **metrics})
    return metrics


def run(cfg: ExperimentConfig, executor: Executor) -> dict[str, Path]:
    """Train every base model the config needs (skipping finished ones); returns role -> checkpoint."""
    from mid_core.checkpoint import read_checkpoint

    paths = ExperimentPaths.of(cfg)
    with stage_run(cfg, "teacher", method="teacher") as run_:
        todo = []
        for role, seed in models_to_train(cfg):
            if paths.model(role).exists():
                log.info("%s: %s exists; not retraining (delete it to retrain)", role, paths.model(role))
            else:
                todo.append({"role": role, "seed": seed, "checkpoint": str(paths.model(role))})
        if todo:
            t = cfg.teacher
            executor.train("pipeline.stages.teacher:train_worker",
                           {"config": cfg.to_dict(), "jobs": todo, "tracking_uri": run_.tracking_uri,
                            "run_id": run_.run_id, "ray_results": str(paths.ray_results)},
                           WorkerResources(t.num_workers, t.worker_cpus, t.use_gpu), name=f"{cfg.name}-teacher")
        done = {}
        for role, _seed in models_to_train(cfg):
            payload = read_checkpoint(paths.model(role))
            run_.log_metrics({f"{role}/final_{k}": float(v) for k, v in payload["metrics"].items()
                              if isinstance(v, (int, float))})
            run_.log_artifact(paths.model(role), "models")
            done[role] = paths.model(role)
    return done
