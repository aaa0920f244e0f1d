"""Stage 3: MID training on Ray Train, streaming index-aligned rows from the adversarial store.

Each worker runs ``mid_core.meta_step`` on its shard of every batch. The student is NOT wrapped in DDP:
DDP does not support the higher-order gradients of the meta step, and ``functional_call`` on
``ddp.module`` would silently skip its gradient synchronisation. Instead each worker all-reduces (averages)
its gradients by hand after the step, so every worker applies the same update and ends each step with
identical parameters (``mid.verify_sync: true`` checks that after every step). The held-out attack of a step
is a function of (seed, step), identical on every worker.

Reports and checkpoints every epoch (student, optimizer, epoch, step, teacher fingerprint); a restarted run
resumes from the latest checkpoint. The deployed model (E_s then C_t) is written to
``<output_dir>/models/<mid.variant>.pt`` (``mid.pt`` by default); ablation variants (``mid.variant``) share the
teacher and the pool of one output_dir.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.config import ConfigError, ExperimentConfig, MidConfig, config_from_dict
from pipeline.paths import ExperimentPaths
from pipeline.ray_runtime import auto_threads, init_ray, train_scaling, worker_device, worker_env
from pipeline.tracking import RunLogger, stage_run


def meta_config(cfg: ExperimentConfig) -> Any:
    """The ``mid_core.MetaConfig`` of an experiment (ablation switches folded into the weights)."""
    from mid_core.losses import LossWeights
    from mid_core.meta_step import MetaConfig

    def weights(w: Any) -> LossWeights:
        return LossWeights(ac=w.ac if cfg.mid.use_ac else 0.0, cc=w.cc if cfg.mid.use_cc else 0.0, lc=w.lc)

    return MetaConfig(inner_lr=cfg.mid.inner_lr, meta_test_weight=cfg.mid.meta_test_weight, first_order=cfg.mid.first_order,
                      use_meta=cfg.mid.use_meta, distill=cfg.mid.use_distillation, temperature=cfg.mid.temperature,
                      kl_reduction=cfg.mid.kl_reduction, train_weights=weights(cfg.mid.train_weights), test_weights=weights(cfg.mid.test_weights))


def method_name(cfg: ExperimentConfig) -> str:
    """'mid', or e.g. 'mid[no-meta,no-cc]' for a Table 8 ablation ('mid[no-meta,no-dst,no-ac,no-cc]' is ERM)."""
    off = [n for n, on in (("meta", cfg.mid.use_meta), ("dst", cfg.mid.use_distillation), ("ac", cfg.mid.use_ac),
                           ("cc", cfg.mid.use_cc)) if not on]
    suffix = (["first-order"] if cfg.mid.first_order else []) + [f"no-{n}" for n in off]
    return "mid" + (f"[{','.join(suffix)}]" if suffix else "")


def average_gradients(model: torch.nn.Module, world_size: int) -> None:
    """All-reduce every parameter gradient (sum) and divide by the world size, in one flat buffer."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _max_divergence(model: torch.nn.Module, world_size: int) -> float:
    from mid_core.training import param_fingerprint

    mine = param_fingerprint(model)
    gathered = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    return float(max((g - mine).abs().max() for g in gathered))


FAULT_STEP_ENV = "MID_FAULT_KILL_AT_STEP"
FAULT_MARKER_ENV = "MID_FAULT_MARKER"


def _maybe_inject_fault(step: int) -> None:
    """Test hook: hard-kill this worker once when it reaches step ``$MID_FAULT_KILL_AT_STEP``.

    The marker file ``$MID_FAULT_MARKER`` makes the fault fire only once, so the restarted worker survives.
    """
    target, marker = os.environ.get(FAULT_STEP_ENV), os.environ.get(FAULT_MARKER_ENV)
    if target and marker and step == int(target) and not os.path.exists(marker):
        Path(marker).write_text(f"killed at step {step}\n")
        os._exit(1)


def _mid_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: stream the store shard, run the meta step, average gradients, checkpoint."""
    import ray.train

    from mid_core.checkpoint import load_teacher, save_checkpoint
    from mid_core.datasets import load_dataset
    from mid_core.evaluation import accuracy
    from mid_core.meta_step import BENIGN, apply_grads, draw_held_out, meta_step
    from mid_core.models import DeployedModel, classifier_student_from_teacher, student_from_teacher
    from mid_core.training import set_learning_rate
    from pipeline.store_datasource import adv_column

    cfg = config_from_dict(loop_config["config"], check_data=False)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(auto_threads(cfg.mid.torch_threads, cfg.mid.num_workers))
    torch.manual_seed(cfg.seed)
    device = worker_device(cfg.mid.use_gpu)
    teacher = load_teacher(loop_config["teacher_checkpoint"]).to(device)
    if cfg.mid.use_distillation:  # student encoder E_s; deployed = E_s then the frozen C_t
        student = student_from_teacher(teacher, cfg.mid.student_init)
        deployed = DeployedModel(student, teacher.classifier)
    else:  # Table 8 "no DST" / ERM: a whole classifier trained with cross-entropy, deployed as it is
        student = deployed = classifier_student_from_teacher(teacher, cfg.mid.student_init)
    student.to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.mid.lr)
    mcfg = meta_config(cfg)
    start_epoch, step = 0, 0
    end_epoch = int(loop_config.get("end_epoch") or cfg.mid.epochs)
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:  # a restarted worker group (or a rerun of this segment) resumes from its last checkpoint
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "train_state.pt", map_location=device, weights_only=True)
    elif loop_config.get("init_state"):  # the next segment after a pool refresh continues the previous one
        state = torch.load(loop_config["init_state"], map_location=device, weights_only=True)
    if state is not None:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        if rank == 0:
            print(f"[mid] resuming from epoch {start_epoch}, step {step}", flush=True)
    if world > 1:
        for p in student.parameters():
            dist.broadcast(p.data, src=0)
    domains = [BENIGN, *loop_config["attacks"]]
    pool_version = int(loop_config.get("pool_version", 0))
    logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"], enabled=(rank == 0))
    validation = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).subset(cfg.evaluation.limit or 1000)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, end_epoch):
        set_learning_rate(optimizer, cfg.mid.lr_at(epoch))
        t0, sums, batches, divergence = time.perf_counter(), {}, 0, 0.0
        held_counts = {d: 0 for d in domains}
        for batch in shard.iter_torch_batches(batch_size=cfg.mid.batch_size, drop_last=True,
                                              local_shuffle_buffer_size=cfg.mid.shuffle_buffer or None,
                                              local_shuffle_seed=cfg.seed + epoch * 7919 + rank):
            labels = batch["label"].to(device).long()
            views = {BENIGN: batch["clean"].to(device).float().div_(255.0)}
            for name in loop_config["attacks"]:
                views[name] = batch[adv_column(name)].to(device).float().div_(255.0)
            held_out = draw_held_out(domains, cfg.seed, step)
            result = meta_step(student, teacher, views, labels, held_out, mcfg)
            apply_grads(student, result.grads)
            if world > 1:
                average_gradients(student, world)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cfg.mid.verify_sync and world > 1:
                divergence = max(divergence, _max_divergence(student, world))
            step += 1
            batches += 1
            _maybe_inject_fault(step)
            if result.held_out:
                held_counts[result.held_out] += 1
            for k, v in result.metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % cfg.mid.log_every == 0:
                logger.log({f"step/{k}": v for k, v in result.metrics.items()}, step=step)
        metrics: dict[str, float] = {k: v / max(batches, 1) for k, v in sums.items()}
        metrics.update({"epoch": epoch + 1, "steps": step, "batches_this_epoch": batches,
                        "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0,
                        "max_param_divergence": divergence,
                        "world_size": world, "sync_verified": float(cfg.mid.verify_sync and world > 1),
                        "pool_version": pool_version})
        metrics.update({f"held_out_count/{d}": c for d, c in held_counts.items()})
        metrics["val_clean_accuracy"] = accuracy(deployed, validation.images, validation.labels)
        student.train()
        logger.log({k: v for k, v in metrics.items() if not k.startswith("held_out")}, step=epoch + 1)
        if rank == 0:
            print(f"[mid] epoch {epoch + 1}/{cfg.mid.epochs} loss={metrics.get('loss_total', float('nan')):.4f} "
                  f"val_clean={metrics['val_clean_accuracy']:.4f} ({metrics['epoch_seconds']:.1f}s, {batches} steps)", flush=True)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                # teacher_fingerprint: which teacher this state was trained against (checked by mid.continue_from)
                torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": epoch + 1, "step": step,
                            "teacher_fingerprint": loop_config.get("teacher_fingerprint")}, Path(d) / "train_state.pt")
                save_checkpoint(Path(d) / "deployed.pt", deployed, kind="deployed", backbone=cfg.model.backbone,
                                config=cfg.to_dict(), metrics=metrics, in_channels=validation.images.shape[1])
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)


def _open_training_store(cfg: ExperimentConfig, path: Path, teacher_fp: str, source_fp: str | None) -> Any:
    """Open a complete training pool and check it belongs to the teacher in use (and to its source model)."""
    from storage_schemas import FingerprintMismatchError, open_store

    store = open_store(path, require_complete=True, expected_fingerprint=source_fp)
    if store.attrs.get("teacher_fingerprint") != teacher_fp:
        raise FingerprintMismatchError(
            f"store {path} was generated for teacher {store.attrs.get('teacher_fingerprint')} but the teacher "
            f"in use is {teacher_fp}; regenerate the pool (jobs/generate_pool.py) or use the matching teacher")
    return store


def _fit_segment(cfg: ExperimentConfig, paths: ExperimentPaths, store_path: Path, attacks: list[str], name: str,
                 end_epoch: int, init_state: Path | None, pool_version: int, run_id: str, teacher_fp: str) -> Any:
    """One Ray Train run over epochs [previous end, end_epoch) on one pool version."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from pipeline.store_datasource import read_store

    # Same config + seed -> same batches in the same order (needed for exact resume and reproducibility).
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    scaling, torch_config = train_scaling(cfg.mid.num_workers, cfg.mid.worker_cpus, cfg.mid.use_gpu)
    dataset = read_store(str(store_path)).randomize_block_order(seed=cfg.seed + pool_version)
    trainer = TorchTrainer(
        _mid_worker,
        train_loop_config={"config": cfg.to_dict(), "teacher_checkpoint": str(paths.model("teacher")),
                           "teacher_fingerprint": teacher_fp, "attacks": attacks,
                           "tracking_uri": cfg.tracking_uri(), "run_id": run_id, "end_epoch": end_epoch,
                           "init_state": str(init_state) if init_state else None, "pool_version": pool_version},
        scaling_config=scaling, torch_config=torch_config,
        run_config=RunConfig(name=name, storage_path=str(paths.ray_results),
                             failure_config=FailureConfig(max_failures=1),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": worker_env()}),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"MID training produced no checkpoint; see the Ray Train logs under {paths.ray_results}")
    return result.checkpoint


def _copy_atomic(src: Path, dest: Path) -> None:
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def refreshed_pool_path(paths: ExperimentPaths, version: int, variant: str = "mid") -> Path:
    """Pool version ``version`` of MID variant ``variant`` (0 = the pool generated against the teacher by
    jobs/generate_pool.py, shared by every variant; later versions belong to the variant that refreshed them)."""
    if version == 0:
        return paths.train_pool
    return paths.stores / (f"pool_train_r{version}.zarr" if variant == "mid" else f"pool_train_{variant}_r{version}.zarr")


def _warn_if_decoder_collapsed(cfg: ExperimentConfig, teacher_path: Path) -> float:
    """Print a warning when the teacher's decoder does not reconstruct (then CC has no gradient); returns R².

    Uses the R² the teacher stage recorded, or measures it on the first 1,000 test images for older checkpoints.
    """
    from mid_core.checkpoint import load_teacher, read_checkpoint
    from mid_core.datasets import load_dataset
    from mid_core.training import decoder_warning, reconstruction_r2

    r2 = read_checkpoint(teacher_path)["metrics"].get("recon_r2")
    if r2 is None:
        test = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).subset(1000)
        r2 = reconstruction_r2(load_teacher(teacher_path), test.images)
    warning = decoder_warning(float(r2))
    if warning:
        print(f"[mid] WARNING: {warning}", flush=True)
    return float(r2)


def segments_dir(paths: ExperimentPaths, variant: str) -> Path:
    """Where MID variant ``variant`` keeps its per-segment training states and deployed models."""
    return paths.root / ("mid_segments" if variant == "mid" else f"mid_segments_{variant}")


def continuation_state(cfg: ExperimentConfig, paths: ExperimentPaths, teacher_fp: str | None = None) -> tuple[Path, int]:
    """The last training state of variant ``mid.continue_from`` and its epoch; raises ``ValueError`` with a fix when
    that variant was not trained, was trained differently (settings or teacher), or already has ``mid.epochs`` epochs.

    ``teacher_fp`` is the fingerprint of the teacher in use (computed from ``models/teacher.pt`` when not given)."""
    from mid_core.checkpoint import read_checkpoint

    source = cfg.mid.continue_from
    assert source is not None
    states = {int(p.stem.removeprefix("train_state_epoch")): p
              for p in segments_dir(paths, source).glob("train_state_epoch*.pt")}
    if not states:
        raise ValueError(f"mid.continue_from: {source!r} has no training state under {segments_dir(paths, source)}; "
                         f"train that variant first (jobs/train_mid.py with mid.variant: {source})")
    epoch = max(states)
    if epoch >= cfg.mid.epochs:
        raise ValueError(f"mid.continue_from: {source!r} already has {epoch} epochs; set mid.epochs above {epoch} "
                         "to train longer")
    theirs = read_checkpoint(states[epoch].with_name(f"deployed_epoch{epoch}.pt"))["config"]
    for section, key in (("model", "backbone"), ("mid", "use_distillation"), ("mid", "batch_size"),
                         ("mid", "attacks"), ("data", "train_limit"), ("seed", None)):
        mine = getattr(getattr(cfg, section), key) if key else getattr(cfg, section)
        other = theirs.get(section, {}).get(key) if key else theirs.get(section)
        if mine != other:
            name = f"{section}.{key}" if key else section
            raise ValueError(f"mid.continue_from: {source!r} was trained with {name} = {other!r}, this config has "
                             f"{mine!r}; continuing would not equal one longer run. Use the same {name}.")
    # The learning rate may change after the epochs already trained (a decay that starts later), not before them.
    schedule = {k: v for k, v in theirs.get("mid", {}).items() if k in ("lr", "lr_decay_epochs", "lr_decay_factor")}
    their_rate = MidConfig(**schedule).lr_at  # a key an older run did not write takes its default (no decay)
    for e in range(epoch):
        if not math.isclose(cfg.mid.lr_at(e), their_rate(e), rel_tol=1e-12):
            raise ValueError(f"mid.continue_from: {source!r} trained epoch {e + 1} at learning rate {their_rate(e)!r}, "
                             f"this config's schedule (mid.lr {cfg.mid.lr}, mid.lr_decay_epochs "
                             f"{cfg.mid.lr_decay_epochs}) gives {cfg.mid.lr_at(e)!r}; continuing would not equal one "
                             f"longer run. Keep mid.lr and put decay epochs at or after epoch {epoch}.")
    # The training state records the fingerprint of the teacher it was trained against. States written before that
    # key existed cannot be checked: the check is skipped with a warning (not refused, so finished runs stay usable).
    theirs_fp = torch.load(states[epoch], map_location="cpu", weights_only=True).get("teacher_fingerprint")
    if theirs_fp is None:
        print(f"[mid] WARNING: mid.continue_from: {states[epoch]} records no teacher fingerprint (written by an older "
              "version); cannot check it was trained with the teacher in use", flush=True)
    else:
        if teacher_fp is None:
            from pipeline.generation import checkpoint_fingerprint

            teacher_fp = checkpoint_fingerprint(paths.model("teacher"))
        if theirs_fp != teacher_fp:
            raise ValueError(f"mid.continue_from: {source!r} was trained with teacher {theirs_fp[:12]}, the teacher in use "
                             f"({paths.model('teacher')}) is {teacher_fp[:12]}; continuing would not equal one longer "
                             f"run. Retrain {source!r} with this teacher, or restore the teacher it was trained with.")
    return states[epoch], epoch


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    """Train MID on the config's training pool; returns the deployed checkpoint path.

    With ``pool.refresh_every: K`` the run is split into segments of K epochs; after each segment the pool is
    regenerated (same Ray Data job, new store version ``stores/pool_train_r<n>.zarr``) against the current
    deployed model, so the pool follows the model being trained. The store records the source model's
    fingerprint, role ``deployed`` and the epoch it came from.
    """
    import shutil

    import mlflow

    from mid_core.checkpoint import read_checkpoint
    from pipeline.generation import checkpoint_fingerprint, generate_store

    if cfg.mid.online_attacks:
        raise ConfigError("mid.online_attacks is a diagnostic of scripts/headline_direct.py (attacks generated in the "
                          "training loop); jobs/train_mid.py trains from the precomputed pool: remove the key, or run "
                          "python scripts/headline_direct.py --config ... --variants <this variant>")
    paths = ExperimentPaths.of(cfg)
    variant = cfg.mid.variant
    out = paths.model(variant)
    if out.exists() and not force:
        print(f"[mid] {out} exists; not retraining (pass --force to retrain)", flush=True)
        return out
    base_name = f"{cfg.name}-{variant}"
    if force:  # a forced retrain must not resume from the previous run's checkpoints
        for old in paths.ray_results.glob(f"{base_name}*"):
            shutil.rmtree(old)
    teacher_fp = checkpoint_fingerprint(paths.model("teacher"))
    store = _open_training_store(cfg, paths.train_pool, teacher_fp, teacher_fp if cfg.pool.source == "teacher" else None)
    attacks = list(cfg.mid.attacks or store.attack_names)
    missing = [a for a in attacks if a not in store.attack_names]
    if missing:
        raise ValueError(f"mid.attacks {missing} are not in the training pool {paths.train_pool} (it holds "
                         f"{list(store.attack_names)}); regenerate the pool with them in pool.attacks")
    if cfg.mid.use_distillation and cfg.mid.use_cc:
        _warn_if_decoder_collapsed(cfg, paths.model("teacher"))
    epoch, init_state = 0, None
    if cfg.mid.continue_from:  # checked before Ray starts, so a bad continuation fails in a second
        init_state, epoch = continuation_state(cfg, paths, teacher_fp)
        print(f"[mid] continuing {cfg.mid.continue_from!r} from epoch {epoch} ({init_state})", flush=True)
    init_ray()
    segment_len = cfg.pool.refresh_every or cfg.mid.epochs
    state_dir = segments_dir(paths, variant)
    tags = {"pool_id": str(store.attrs.get("pool_id", "")), "pool_refresh_every": str(cfg.pool.refresh_every),
            "variant": variant, "train_attacks": ",".join(attacks), "continue_from": str(cfg.mid.continue_from or "")}
    with stage_run(cfg, "mid", method=method_name(cfg), extra_tags=tags, key=variant) as run_:
        version, source_fp = 0, None
        while epoch < cfg.mid.epochs:
            end = min(cfg.mid.epochs, epoch + segment_len)
            store_path = refreshed_pool_path(paths, version, variant)
            if version > 0:
                _open_training_store(cfg, store_path, teacher_fp, source_fp)
            name = base_name if not cfg.pool.refresh_every else f"{base_name}-seg{version}"
            checkpoint = _fit_segment(cfg, paths, store_path, attacks, name, end, init_state, version, run_.info.run_id,
                                      teacher_fp)
            with checkpoint.as_directory() as d:
                init_state = state_dir / f"train_state_epoch{end}.pt"
                _copy_atomic(Path(d) / "train_state.pt", init_state)
                deployed = state_dir / f"deployed_epoch{end}.pt"
                _copy_atomic(Path(d) / "deployed.pt", deployed)
            epoch = end
            if cfg.pool.refresh_every and epoch < cfg.mid.epochs:
                version += 1
                t0 = time.perf_counter()
                refreshed = generate_store(
                    cfg, refreshed_pool_path(paths, version, variant), "train", attacks, cfg.pool.eps, cfg.pool.steps,
                    cfg.pool.step_size, cfg.data.train_limit, {"role": "train_pool", "refresh_epoch": epoch,
                                                               "pool_version": version},
                    source=deployed, source_role="deployed", seed=cfg.seed + version)
                source_fp = checkpoint_fingerprint(deployed)
                mlflow.log_metrics({f"refresh/success_rate/{k}": v for k, v in refreshed.success_rates().items()}, step=epoch)
                mlflow.log_metric("refresh/seconds", time.perf_counter() - t0, step=epoch)
        _copy_atomic(state_dir / f"deployed_epoch{epoch}.pt", out)
        final = read_checkpoint(out)["metrics"]
        mlflow.log_metrics({f"final/{k}": float(v) for k, v in final.items() if isinstance(v, (int, float))})
        mlflow.log_artifact(str(out), artifact_path="models")
    return out
