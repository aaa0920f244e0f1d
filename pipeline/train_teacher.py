"""Stage 1: train the teacher autoencoder-classifier and, when the config needs them, the transfer substitute
(for the ``transfer`` protocol), a standard classifier on clean data and the Madry PGD adversarially trained
baseline ``at`` (when the evaluation lists it), each with Ray Train (1..N workers, DDP through ``prepare_model``).

The teacher has no higher-order gradients, so DDP is fine here (unlike the MID student).
Each model is written to ``<output_dir>/models/<role>.pt`` as a weights-only checkpoint with its config.
A model whose checkpoint already exists is not retrained (delete it to retrain).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ExperimentConfig, config_from_dict
from pipeline.paths import ExperimentPaths
from pipeline.ray_runtime import auto_threads, init_ray, train_scaling, worker_device, worker_env
from pipeline.tracking import RunLogger, stage_run


def _teacher_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: train each requested model in turn (one worker group for all of them)."""
    for job in loop_config["jobs"]:
        _train_one({**loop_config, **job})


def _train_one(loop_config: dict[str, Any]) -> None:
    """Train one model (role teacher | substitute | standard | at), save it on rank 0 and report."""
    import ray.train
    import ray.train.torch

    from mid_core.checkpoint import save_checkpoint
    from mid_core.datasets import NUM_CLASSES, load_dataset
    from mid_core.evaluation import accuracy
    from mid_core.models import StandardClassifier, Teacher
    from mid_core.attacks import default_spec, run_attack
    from mid_core.training import (
        adversarial_epoch, classifier_epoch, decoder_warning, reconstruction_r2, shuffled_batches, teacher_epoch,
    )

    cfg = config_from_dict(loop_config["config"], check_data=False)
    role, seed = loop_config["role"], loop_config["seed"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(auto_threads(0, world))
    torch.manual_seed(seed)
    device = worker_device(cfg.teacher.use_gpu)
    train = load_dataset(cfg.data.dataset, "train", cfg.data.root, cfg.data.download).subset(cfg.data.train_limit)
    train.images, train.labels = train.images.to(device), train.labels.to(device)
    test = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download)
    in_ch, k = train.images.shape[1], NUM_CLASSES[cfg.data.dataset]
    is_teacher_like = role in ("teacher", "substitute")
    model = Teacher.from_backbone(cfg.model.backbone, in_ch, k) if is_teacher_like else StandardClassifier.from_backbone(cfg.model.backbone, in_ch, k)
    model.to(device)
    wrapped = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    is_at = role == "at"
    epochs, batch_size = (cfg.at.epochs, cfg.at.batch_size) if is_at else (cfg.teacher.epochs, cfg.teacher.batch_size)
    opt = torch.optim.Adam(wrapped.parameters(), lr=cfg.at.lr if is_at else cfg.teacher.lr)
    gen = torch.Generator().manual_seed(seed)  # CPU: the permutation indexes device tensors alike
    attack_gen = torch.Generator().manual_seed(seed + 1 + rank)
    pgd = default_spec("PGD_N", eps=cfg.at.eps, steps=cfg.at.steps, step_size=cfg.at.step_size, rand_init=True)

    def madry_pgd(target: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return run_attack(pgd, target, x, y, num_classes=k, generator=attack_gen).adversarial

    logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"], enabled=(rank == 0))
    as_classifier = StandardClassifier(model.encoder, model.classifier) if is_teacher_like else model
    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        t0 = time.perf_counter()
        batches = shuffled_batches(train.images, train.labels, batch_size, gen, rank, world)
        if is_at:
            metrics = adversarial_epoch(wrapped, batches, opt, madry_pgd, attacked_model=model)
        elif is_teacher_like:
            metrics = teacher_epoch(wrapped, batches, opt, cfg.teacher.recon_loss, cfg.teacher.recon_weight)
        else:
            metrics = classifier_epoch(wrapped, batches, opt)
        metrics["test_accuracy"] = accuracy(as_classifier, test.images, test.labels)
        if is_teacher_like:
            metrics["recon_r2"] = reconstruction_r2(model, test.images)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        logger.log({f"{role}/{k_}": v for k_, v in metrics.items()}, step=epoch)
        if rank == 0:
            print(f"[{role}] epoch {epoch + 1}/{epochs} " + " ".join(f"{k_}={v:.4f}" for k_, v in metrics.items()), flush=True)
    if rank == 0:
        warning = decoder_warning(metrics["recon_r2"]) if role == "teacher" else None
        if warning:
            print(f"[{role}] WARNING: {warning}", flush=True)
        out = Path(loop_config["checkpoint_path"])
        save_checkpoint(out, model, kind="teacher" if is_teacher_like else "standard", backbone=cfg.model.backbone,
                        config=cfg.to_dict(), metrics={**metrics, "seed": seed}, in_channels=in_ch, num_classes=k)
    ray.train.report({**metrics, "role": role})


def models_to_train(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """(role, seed) pairs this config needs: the teacher always; the substitute, standard and at when used.

    The substitute only serves the ``transfer`` protocol (or a ``substitute`` evaluation row): a config without
    either does not pay for it, and adding ``transfer`` later trains it on the next run of this stage.
    """
    roles = [("teacher", cfg.seed)]
    if "transfer" in cfg.evaluation.protocols or "substitute" in cfg.evaluation.models:
        roles.append(("substitute", cfg.seed + cfg.teacher.substitute_seed_offset))
    if cfg.pool.source == "standard" or "standard" in cfg.evaluation.models:
        roles.append(("standard", cfg.seed + cfg.teacher.standard_seed_offset))
    if "at" in cfg.evaluation.models:
        roles.append(("at", cfg.seed + cfg.at.seed_offset))
    return roles


def run(cfg: ExperimentConfig) -> dict[str, Path]:
    """Train every model the config needs (skipping finished ones); returns role -> checkpoint path."""
    import mlflow
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from mid_core.checkpoint import read_checkpoint

    paths = ExperimentPaths.of(cfg)
    init_ray()
    done: dict[str, Path] = {}
    with stage_run(cfg, "teacher", method="teacher") as run_:
        todo = []
        for role, seed in models_to_train(cfg):
            ckpt = paths.model(role)
            if ckpt.exists():
                print(f"[{role}] {ckpt} exists; not retraining (delete it to retrain)", flush=True)
            else:
                todo.append({"role": role, "seed": seed, "checkpoint_path": str(ckpt)})
        if todo:
            scaling, torch_config = train_scaling(cfg.teacher.num_workers, cfg.teacher.worker_cpus, cfg.teacher.use_gpu)
            trainer = TorchTrainer(
                _teacher_worker,
                train_loop_config={"config": cfg.to_dict(), "jobs": todo,
                                   "tracking_uri": cfg.tracking_uri(), "run_id": run_.info.run_id},
                scaling_config=scaling, torch_config=torch_config,
                run_config=RunConfig(name=f"{cfg.name}-teacher", storage_path=str(paths.ray_results),
                                     worker_runtime_env={"env_vars": worker_env()}),
            )
            trainer.fit()
        for role, _seed in models_to_train(cfg):
            ckpt = paths.model(role)
            payload = read_checkpoint(ckpt)
            mlflow.log_metrics({f"{role}/final_{k}": float(v) for k, v in payload["metrics"].items() if isinstance(v, (int, float))})
            mlflow.log_artifact(str(ckpt), artifact_path="models")
            done[role] = ckpt
    return done
