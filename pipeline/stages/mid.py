"""Stage 3: MID meta-training of the student encoder, over the adversarial pool or on views generated in training.

One training function (``train_worker``) runs on every executor's workers. Each step takes a batch of index-aligned
views (clean image, label, one view per attack), draws the held-out domain a* from (seed, step) (identical on every
worker without communication), runs ``mid_core.meta_step`` on this worker's share, averages the gradients over the
workers by hand (the student is not wrapped in DDP: its second-order gradients do not go through it) and takes an
Adam step. ``mid.verify_sync: true`` checks after every step that all workers hold identical parameters.

Batches: the store's blocks arrive in a fixed order (``block_order``: a permutation by the seed); the rows of every
window of ``mid.shuffle_buffer`` rows are shuffled with a generator seeded from (seed, epoch, rank) and cut into
batches (``epoch_batches``). The same config and seed give the same batches, hence with one worker the same weights,
through either executor.

Views generated during training (no pool): the rows come from the training split, cut into blocks of
``pool.block_size`` read in ``block_order``; with several workers each takes its own blocks (``shard_blocks``, as
each reads its own share of a store's blocks) and every rank takes as many steps as the smallest share holds full batches, so
the ranks attack disjoint images, stay in step, and together see the images one worker sees. The views of the step
``t`` on rank ``r`` draw from ``attack_seed(seed + ONLINE_SEED_OFFSET, t * world_size + r, attack)``.

* ``mid.online_attacks``: each batch's views are generated against the current deployed model just before its step
  (adaptive MID; age 0).
* ``mid.attack_refresh_steps: K``: against frozen snapshots of the deployed model, refreshed every K steps and one
  window ahead (double buffering). Each epoch is cut into windows of K steps (the last may be shorter; windows never
  cross an epoch boundary). At the start of window w the deployed model is copied and the views of window w + 1 are
  made against that copy; window 0's views are made against the copy taken at the epoch's start, like window 1's.
  A step's views are thus ``K + i`` steps old at the i-th step of a window w >= 1 and ``i`` in window 0 (K = 1:
  one step old from an epoch's second step on). Which snapshot serves which step depends only on the step, so the
  result does not depend on when the views are computed; this version computes them synchronously when the
  snapshot is taken (at the start of the window before the one they serve; window 0's with window 1's). Because the schedule restarts every epoch, a run resumed from
  ``state_epoch<N>.pt`` makes the same snapshots, hence the same views, as one that never stopped.

Both record per epoch ``attack_seconds`` and ``attack_staleness_steps`` (the mean age, in steps, of the model a
step's views were made against).

State: after every epoch, rank 0 writes ``training/<variant>/state_epoch<N>.pt`` (student, optimizer, epoch, step,
teacher fingerprint, config) and ``deployed_epoch<N>.pt``. That is the one continuation mechanism: a restarted
worker group, a rerun of the same command, the next segment after a pool refresh, and ``mid.continue_from`` (another
variant's state, optimizer included) all start from such a state, so an interrupted run ends with what an
uninterrupted one writes.

Pool refresh (``pool.refresh_every: K``): the run is cut into segments of K epochs; after each, the pool is
regenerated against the current deployed model (new store version) and training continues on it.
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from pipeline.config import ExperimentConfig, MidConfig, config_from_dict
from pipeline.errors import MissingInputError, StaleInputError, UserError
from pipeline.executors.base import Executor, WorkerContext, WorkerResources, shard_blocks
from pipeline.paths import ExperimentPaths
from pipeline.stages.common import checkpoint_fingerprint, require_model
from pipeline.tracking import RunLogger, stage_run

log = logging.getLogger(__name__)

ONLINE_SEED_OFFSET = 7_777_777  # generated views: attack_seed(seed + this, step * world_size + rank, attack)
KEEP_STATES = 2  # training states kept per variant (the latest ones)
SPARSITY_METRIC = "encoder_sq_sum"  # per-epoch metric: Σθ² of the deployed encoder E_s (the analysis stage's Fig. 10)


def meta_config(cfg: ExperimentConfig) -> Any:
    """The ``mid_core.MetaConfig`` of an experiment (ablation switches folded into the weights)."""
    from mid_core.losses import LossWeights
    from mid_core.meta_step import MetaConfig

    def weights(w: Any) -> LossWeights:
        return LossWeights(ac=w.ac if cfg.mid.use_ac else 0.0, cc=w.cc if cfg.mid.use_cc else 0.0, lc=w.lc)

    return MetaConfig(inner_lr=cfg.mid.inner_lr, meta_test_weight=cfg.mid.meta_test_weight,
                      first_order=cfg.mid.first_order, use_meta=cfg.mid.use_meta, distill=cfg.mid.use_distillation,
                      temperature=cfg.mid.temperature, kl_reduction=cfg.mid.kl_reduction,
                      train_weights=weights(cfg.mid.train_weights), test_weights=weights(cfg.mid.test_weights))


def method_name(cfg: ExperimentConfig) -> str:
    """'mid', or e.g. 'mid[no-meta,no-cc]' for a Table 8 ablation ('mid[no-meta,no-dst,no-ac,no-cc]' is ERM)."""
    off = [n for n, on in (("meta", cfg.mid.use_meta), ("dst", cfg.mid.use_distillation), ("ac", cfg.mid.use_ac),
                           ("cc", cfg.mid.use_cc)) if not on]
    suffix = (["first-order"] if cfg.mid.first_order else []) + (["online"] if cfg.mid.online_attacks else []) \
        + ([f"stale-k{cfg.mid.attack_refresh_steps}"] if cfg.mid.attack_refresh_steps else []) \
        + [f"no-{n}" for n in off]
    return "mid" + (f"[{','.join(suffix)}]" if suffix else "")


# ------------------------------------------------------------------------------------------------ batches


def block_order(num_blocks: int, seed: int) -> list[int]:
    """The order in which training reads a store's blocks: a permutation drawn from ``seed``."""
    return torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()


def epoch_batches(blocks: Iterable[dict[str, np.ndarray]], batch_size: int, window_rows: int,
                  generator: torch.Generator) -> Iterator[dict[str, np.ndarray]]:
    """Full batches of ``batch_size`` rows from a stream of blocks (dicts of index-aligned column arrays).

    Blocks are gathered until they hold ``window_rows`` rows; that window (plus the rows left over from the last
    one) is permuted with ``generator`` and cut into batches; the rest carries over. The last partial batch of the
    stream is dropped, as every step needs a full batch.
    """
    pending: list[dict[str, np.ndarray]] = []
    rows = 0

    def emit(final: bool) -> Iterator[dict[str, np.ndarray]]:
        nonlocal pending, rows
        columns = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
        perm = torch.randperm(rows, generator=generator).numpy()
        full = rows - rows % batch_size
        for i in range(0, full, batch_size):
            yield {k: v[perm[i:i + batch_size]] for k, v in columns.items()}
        pending = [] if final or full == rows else [{k: v[perm[full:]] for k, v in columns.items()}]
        rows = 0 if final else rows - full

    for block in blocks:
        pending.append(block)
        rows += len(block["label"])
        if rows >= window_rows:
            yield from emit(final=False)
    if rows:
        yield from emit(final=True)


def dataset_blocks(images: torch.Tensor, labels: torch.Tensor, block_size: int,
                   order: list[int]) -> Iterator[dict[str, np.ndarray]]:
    """The rows of an in-memory split as store-like blocks (``clean`` uint8, ``label``) in ``order``: what training
    with generated views reads, in the same order as a store of that block size."""
    from mid_core.quantize import to_uint8

    for block in order:
        sl = slice(block * block_size, min((block + 1) * block_size, labels.shape[0]))
        yield {"clean": to_uint8(images[sl]).cpu().numpy(), "label": labels[sl].cpu().numpy().astype(np.int64)}


def dataset_shard(num_rows: int, block_size: int, order: list[int], rank: int, world_size: int,
                  batch_size: int) -> tuple[list[int], int]:
    """(rank ``rank``'s blocks, steps per epoch) of an in-memory split of ``num_rows`` rows cut into blocks of
    ``block_size`` rows and read in ``order``. The blocks are split with ``shard_blocks``; the steps are the full
    batches of the smallest share, which every rank can take, so all ranks step (and average gradients) together."""
    shares = [shard_blocks(order, r, world_size) for r in range(world_size)]
    rows = [sum(min(block_size, num_rows - b * block_size) for b in share) for share in shares]
    return shares[rank], min(rows) // batch_size


def windows(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last one shorter when the items run out)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def generates_views(mid: MidConfig) -> bool:
    """Whether training makes its attack views itself (online or refreshed every K steps) instead of reading a pool."""
    return mid.online_attacks or mid.attack_refresh_steps > 0


def online_view_batches(batches: Iterable[dict[str, np.ndarray]], source: TrainingViews, deployed: torch.nn.Module,
                        first_step: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(batch with views, age 0) per step: each batch is attacked against ``deployed`` when it is drawn, i.e. after
    the previous step's update (``mid.online_attacks``)."""
    for i, batch in enumerate(batches):
        yield source.attach(deployed, batch, first_step + i), 0


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A snapshot of ``model`` (same parameters and buffers) that later updates of ``model`` do not change."""
    snapshot = copy.deepcopy(model)
    for p in snapshot.parameters():
        p.requires_grad_(False)
    return snapshot


def refreshed_view_batches(batches: Iterable[dict[str, np.ndarray]], source: TrainingViews, deployed: torch.nn.Module,
                           first_step: int, every: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(batch with views, age in steps of the model they were made against) per step of one epoch
    (``mid.attack_refresh_steps``; the window rule is in the module docstring).

    The batches are drawn one window ahead: at the start of window w, ``deployed`` is copied and the next window's
    views are made against the copy, then window w's views (made one window earlier) are served. Window 0's views are
    made against the copy taken at the epoch's start. The views are computed synchronously here; computing the next
    window's in the background while the current one trains would give the same views, as the snapshot is fixed
    before the window it serves starts.
    """
    chunks = windows(batches, every)
    window, start = next(chunks, []), first_step
    snapshot = frozen_copy(deployed)  # the model at the start of window 0
    served = [source.attach(snapshot, b, start + i) for i, b in enumerate(window)]
    made_at = start
    while window:
        following = next(chunks, [])
        upcoming = [source.attach(snapshot, b, start + len(window) + i) for i, b in enumerate(following)]
        for i, batch in enumerate(served):
            yield batch, start + i - made_at
        made_at, start = start, start + len(window)
        window, served = following, upcoming
        if window:  # drawn after the last step of the window: the model at the start of the next one
            snapshot = frozen_copy(deployed)


class TrainingViews:
    """This rank's share of the training split and the attack views made of it during training
    (``mid.online_attacks`` or ``mid.attack_refresh_steps``), with the seconds the attacks take."""

    def __init__(self, cfg: ExperimentConfig, attacks: list[str], num_classes: int, rank: int, world_size: int,
                 device: torch.device) -> None:
        from mid_core.datasets import load_dataset
        from pipeline.stages.pool import attack_specs

        data = cfg.data
        self.train = load_dataset(data.dataset, "train", data.root, data.download).subset(data.train_limit)
        self.block_size, self.batch_size = cfg.pool.block_size, cfg.mid.batch_size
        self.refresh = cfg.mid.attack_refresh_steps
        order = block_order(math.ceil(len(self.train) / self.block_size), cfg.seed)
        self.shard, self.epoch_steps = dataset_shard(len(self.train), self.block_size, order, rank, world_size,
                                                     self.batch_size)
        self.specs = attack_specs(attacks, cfg.pool.eps, cfg.pool.steps, cfg.pool.step_size)
        self.seed, self.num_classes = cfg.seed + ONLINE_SEED_OFFSET, num_classes
        self.rank, self.world_size, self.device = rank, world_size, device
        self.seconds = 0.0

    def attach(self, model: torch.nn.Module, batch: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
        """``batch`` (``clean`` uint8 ``(B, C, H, W)``, ``label`` ``(B,)``) plus ``adv_<attack>`` uint8
        ``(B, C, H, W)``: its views against ``model`` for global step ``step``, drawn from
        ``attack_seed(seed, step * world_size + rank, attack)`` (one worker: the step)."""
        from mid_core.quantize import from_uint8
        from pipeline.stages import pool

        t0 = time.perf_counter()
        clean = from_uint8(torch.from_numpy(batch["clean"])).to(self.device)
        labels = torch.from_numpy(batch["label"]).to(self.device).long()
        views, _ = pool.attack_views(model, clean, labels, self.specs, self.seed,
                                     step * self.world_size + self.rank, labels.shape[0], self.num_classes)
        self.seconds += time.perf_counter() - t0
        return {**batch, **{f"adv_{n}": v.numpy() for n, v in views.items()}}

    def epoch(self, deployed: torch.nn.Module, first_step: int, window_rows: int,
              generator: torch.Generator) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """One epoch of (batch with views, age of the model they were made against, in steps): ``epoch_steps``
        batches of this rank's blocks, shuffled as a store's (``epoch_batches``). Resets ``seconds``."""
        self.seconds = 0.0
        blocks = dataset_blocks(self.train.images, self.train.labels, self.block_size, self.shard)
        clean = itertools.islice(epoch_batches(blocks, self.batch_size, window_rows, generator), self.epoch_steps)
        if self.refresh:
            return refreshed_view_batches(clean, self, deployed, first_step, self.refresh)
        return online_view_batches(clean, self, deployed, first_step)


# -------------------------------------------------------------------------------------------------- state


def state_path(folder: Path, epoch: int) -> Path:
    return folder / f"state_epoch{epoch}.pt"


def deployed_path(folder: Path, epoch: int) -> Path:
    return folder / f"deployed_epoch{epoch}.pt"


def latest_state(folder: Path) -> tuple[Path, int] | None:
    """The newest ``state_epoch<N>.pt`` in ``folder`` and its epoch, or None."""
    states = {int(p.stem.removeprefix("state_epoch")): p for p in folder.glob("state_epoch*.pt")}
    if not states:
        return None
    epoch = max(states)
    return states[epoch], epoch


TRAINING_KEYS = (("model", "backbone"), ("data", "dataset"), ("data", "train_limit"), ("seed", None),
                 ("mid", "use_distillation"), ("mid", "batch_size"), ("mid", "attacks"), ("mid", "online_attacks"),
                 ("mid", "attack_refresh_steps"), ("mid", "student_init"), ("pool", "attacks"),
                 ("pool", "refresh_every"))


def check_same_training(cfg: ExperimentConfig, theirs: dict[str, Any], epochs_done: int, what: str,
                        fix: str) -> None:
    """Refuse to continue a training state made with other settings than ``cfg`` (``UserError`` naming the key):
    continuing must equal one longer run. The learning rate may change only after the epochs already trained."""
    for section, key in TRAINING_KEYS:
        mine = getattr(getattr(cfg, section), key) if key else getattr(cfg, section)
        # a key missing from an older state's config had its default then
        other = theirs.get(section, {}).get(key, type(getattr(cfg, section)).model_fields[key].default) if key \
            else theirs.get(section)
        if mine != other:
            name = f"{section}.{key}" if key else section
            raise UserError(f"{what} was trained with {name} = {other!r}, this config has {mine!r}; continuing would "
                            f"not equal one longer run. {fix}")
    schedule = {k: v for k, v in theirs.get("mid", {}).items() if k in ("lr", "lr_decay_epochs", "lr_decay_factor")}
    their_rate = MidConfig(**schedule).lr_at
    for e in range(epochs_done):
        if not math.isclose(cfg.mid.lr_at(e), their_rate(e), rel_tol=1e-12):
            raise UserError(f"{what} trained epoch {e + 1} at learning rate {their_rate(e)!r}, this config's schedule "
                            f"(mid.lr {cfg.mid.lr}, mid.lr_decay_epochs {cfg.mid.lr_decay_epochs}) gives "
                            f"{cfg.mid.lr_at(e)!r}; continuing would not equal one longer run. Keep mid.lr and put "
                            f"decay epochs at or after epoch {epochs_done}. {fix}")


def starting_state(cfg: ExperimentConfig, paths: ExperimentPaths, teacher_fp: str) -> tuple[Path | None, int]:
    """Where training starts: the variant's own latest state (a rerun or restart resumes it), else the latest state
    of ``mid.continue_from``, else nothing (epoch 0). Each is checked to come from the same settings and teacher."""
    own = latest_state(paths.training(cfg.mid.variant))
    if own is not None:
        source, what, fix = own, f"{paths.training(cfg.mid.variant)} (an earlier run of {cfg.mid.variant!r})", \
            "Pass --force to train it from the start, or restore that run's config."
    elif cfg.mid.continue_from:
        source = latest_state(paths.training(cfg.mid.continue_from))
        what = f"mid.continue_from: {cfg.mid.continue_from!r}"
        fix = "Use the same settings, or train a new variant from the start."
        if source is None:
            raise MissingInputError(f"{what} has no training state under {paths.training(cfg.mid.continue_from)}; "
                                    f"train that variant first (mid train with mid.variant: {cfg.mid.continue_from})")
        if source[1] >= cfg.mid.epochs:
            raise UserError(f"{what} already has {source[1]} epochs; set mid.epochs above {source[1]} to train longer")
    else:
        return None, 0
    path, epoch = source
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_same_training(cfg, state["config"], epoch, what, fix)
    if state["teacher_fingerprint"] != teacher_fp:
        raise StaleInputError(f"{what} was trained with teacher {state['teacher_fingerprint'][:12]}, the teacher in use "
                              f"({paths.model('teacher')}) is {teacher_fp[:12]}; retrain it with this teacher "
                              "(--force) or restore the teacher it was trained with")
    return path, epoch


# --------------------------------------------------------------------------------------------- the worker


FAULT_STEP_ENV = "MID_FAULT_KILL_AT_STEP"
FAULT_MARKER_ENV = "MID_FAULT_MARKER"


def _maybe_inject_fault(step: int) -> None:
    """Test hook: hard-kill this worker once when it reaches step ``$MID_FAULT_KILL_AT_STEP`` (the marker file
    ``$MID_FAULT_MARKER`` makes it fire only once, so the restarted worker survives)."""
    target, marker = os.environ.get(FAULT_STEP_ENV), os.environ.get(FAULT_MARKER_ENV)
    if target and marker and step == int(target) and not os.path.exists(marker):
        Path(marker).write_text(f"killed at step {step}\n")
        os._exit(1)


def _views(batch: dict[str, np.ndarray], attacks: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """uint8 columns of a batch -> float views in [0, 1] on ``device``, keyed by domain (``benign`` first)."""
    from mid_core.meta_step import BENIGN

    views = {BENIGN: torch.from_numpy(batch["clean"]).to(device).float().div_(255.0)}
    for name in attacks:
        views[name] = torch.from_numpy(batch[f"adv_{name}"]).to(device).float().div_(255.0)
    return views


def train_worker(ctx: WorkerContext, loop_config: dict[str, Any]) -> None:
    """Training function: MID epochs ``[start, loop_config["end_epoch"])`` on one pool version (see module doc)."""
    from mid_core.analysis.sparsity import squared_weight_sum
    from mid_core.checkpoint import atomic_torch_save, load_teacher, save_checkpoint
    from mid_core.datasets import NUM_CLASSES, load_dataset
    from mid_core.evaluation import accuracy
    from mid_core.kernels import use_cpu_kernels
    from mid_core.meta_step import BENIGN, apply_grads, draw_held_out, meta_step
    from mid_core.models import DeployedModel, classifier_student_from_teacher, student_from_teacher
    from mid_core.training import set_learning_rate

    cfg = config_from_dict(loop_config["config"], check_data=False)
    torch.manual_seed(cfg.seed)
    device = ctx.device
    teacher = load_teacher(loop_config["teacher_checkpoint"]).to(device)
    use_cpu_kernels(teacher)  # faster exact CPU paths for the meta step's double backward (no-op elsewhere)
    if cfg.mid.use_distillation:  # student encoder E_s; deployed = E_s then the frozen C_t
        student = student_from_teacher(teacher, cfg.mid.student_init).to(device)
        deployed: torch.nn.Module = DeployedModel(student, teacher.classifier)
    else:  # Table 8 "no DST" / ERM: a whole classifier trained with cross-entropy, deployed as it is
        student = deployed = classifier_student_from_teacher(teacher, cfg.mid.student_init).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.mid.lr)
    folder = Path(loop_config["state_dir"])
    epoch, step = 0, 0
    resume = latest_state(folder)
    start_from = resume[0] if resume is not None else loop_config.get("init_state")
    if start_from:
        state = torch.load(start_from, map_location=device, weights_only=True)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step = int(state["epoch"]), int(state["step"])
        if ctx.rank == 0:
            log.info("%s: starting from epoch %d, step %d (%s)", cfg.mid.variant, epoch, step, start_from)
    ctx.broadcast_parameters(student)

    attacks = list(loop_config["attacks"])
    domains = [BENIGN, *attacks]
    k = NUM_CLASSES[cfg.data.dataset]
    logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"], enabled=ctx.rank == 0)
    validation = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).subset(cfg.evaluation.limit or 1000)
    val_x, val_y = validation.images.to(device), validation.labels.to(device)
    mcfg = meta_config(cfg)
    generated = TrainingViews(cfg, attacks, k, ctx.rank, ctx.world_size, device) if generates_views(cfg.mid) else None
    end_epoch = int(loop_config["end_epoch"])
    while epoch < end_epoch:
        set_learning_rate(optimizer, cfg.mid.lr_at(epoch))
        t0, sums, batches, divergence, ages = time.perf_counter(), {}, 0, 0.0, []
        held_counts = {d: 0 for d in domains}
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + ctx.rank)
        window_rows = max(cfg.mid.shuffle_buffer, cfg.mid.batch_size)
        stream: Iterator[tuple[dict[str, np.ndarray], int | None]] = \
            generated.epoch(deployed, step, window_rows, generator) if generated is not None else \
            ((b, None) for b in epoch_batches(ctx.store_blocks(), cfg.mid.batch_size, window_rows, generator))
        for batch, age in stream:
            if age is not None:
                student.train()
                ages.append(age)
            labels = torch.from_numpy(batch["label"]).to(device).long()
            views = _views(batch, attacks, device)
            result = meta_step(student, teacher, views, labels, draw_held_out(domains, cfg.seed, step), mcfg)
            apply_grads(student, result.grads)
            ctx.average_gradients(student)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cfg.mid.verify_sync:
                divergence = max(divergence, ctx.max_divergence(student))
            step += 1
            batches += 1
            _maybe_inject_fault(step)
            if result.held_out is not None:
                held_counts[result.held_out] += 1
            for name, value in result.metrics.items():
                sums[name] = sums.get(name, 0.0) + value
            if step % cfg.mid.log_every == 0:
                logger.log({f"step/{n}": v for n, v in result.metrics.items()}, step=step)
        epoch += 1
        metrics: dict[str, float] = {n: v / max(batches, 1) for n, v in sums.items()}
        metrics.update({"epoch": epoch, "steps": step, "batches_this_epoch": batches,
                        "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0,
                        "max_param_divergence": divergence, "world_size": ctx.world_size,
                        "pool_version": int(loop_config.get("pool_version", 0))})
        if generated is not None:
            metrics["attack_seconds"] = generated.seconds
            metrics["attack_staleness_steps"] = float(np.mean(ages)) if ages else 0.0
        metrics.update({f"held_out_count/{d}": c for d, c in held_counts.items()})
        metrics["val_clean_accuracy"] = accuracy(deployed, val_x, val_y)
        metrics[SPARSITY_METRIC] = squared_weight_sum(deployed.encoder)  # the paper's sparsity index (Fig. 10)
        student.train()
        logger.log({n: v for n, v in metrics.items() if not n.startswith("held_out")}, step=epoch)
        if ctx.rank == 0:
            log.info("%s epoch %d/%d loss=%.4f val_clean=%.4f (%.1fs, %d steps)", cfg.mid.variant, epoch,
                     cfg.mid.epochs, metrics.get("loss_total", float("nan")), metrics["val_clean_accuracy"],
                     metrics["epoch_seconds"], batches)
            save_checkpoint(deployed_path(folder, epoch), deployed, kind="deployed", backbone=cfg.model.backbone,
                            config=cfg.to_dict(), metrics=metrics, in_channels=val_x.shape[1], num_classes=k)
            atomic_torch_save({"student": student.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                               "step": step, "teacher_fingerprint": loop_config["teacher_fingerprint"],
                               "config": cfg.to_dict()}, state_path(folder, epoch))
            _prune(folder, epoch, cfg.pool.refresh_every)
    ctx.report({"epoch": epoch, "steps": step})


def _prune(folder: Path, epoch: int, refresh_every: int) -> None:
    """Keep the latest ``KEEP_STATES`` states and deployed models (and the deployed models a pool refresh was
    generated from)."""
    for old in range(1, epoch - KEEP_STATES + 1):
        state_path(folder, old).unlink(missing_ok=True)
        if not (refresh_every and old % refresh_every == 0):
            deployed_path(folder, old).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the driver


def open_training_store(path: str, teacher_fp: str, source_fp: str | None) -> Any:
    """Open a complete training pool and check it belongs to the teacher in use (and to its source model)."""
    from storage_schemas import FingerprintMismatchError, StoreError, open_store

    try:
        store = open_store(path, require_complete=True, expected_fingerprint=source_fp)
    except FingerprintMismatchError as exc:
        raise StaleInputError(str(exc)) from None
    except StoreError as exc:
        raise MissingInputError(f"{exc} (make the pool with mid pool / jobs/generate_pool.py first)") from None
    if store.attrs.get("teacher_fingerprint") != teacher_fp:
        raise StaleInputError(
            f"store {path} was generated for teacher {store.attrs.get('teacher_fingerprint')} but the teacher in use is "
            f"{teacher_fp}; delete the store and regenerate it (mid pool), or use the matching teacher")
    return store


def run(cfg: ExperimentConfig, executor: Executor, force: bool = False) -> Path:
    """Train MID variant ``mid.variant``; returns its deployed checkpoint ``models/<variant>.pt``."""
    from mid_core.checkpoint import read_checkpoint
    from mid_core.training import decoder_warning
    from pipeline.stages.pool import generate_store
    from storage_schemas import open_store

    paths = ExperimentPaths.of(cfg)
    variant = cfg.mid.variant
    out = paths.model(variant)
    if out.exists() and not force:
        log.info("%s: %s exists; not retraining (pass --force to retrain)", variant, out)
        return out
    teacher_path = require_model(cfg, "teacher")
    teacher_fp = checkpoint_fingerprint(teacher_path)
    folder = paths.training(variant)
    if force and folder.exists():  # a forced retrain starts from scratch, not from the previous run's states
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if generates_views(cfg.mid):
        attacks = list(cfg.mid.attacks or cfg.pool.attacks)
        pool_tag = f"stale-k{cfg.mid.attack_refresh_steps}" if cfg.mid.attack_refresh_steps else "online"
    else:
        source_fp = teacher_fp if cfg.pool.source == "teacher" else checkpoint_fingerprint(require_model(cfg, "standard"))
        store = open_training_store(paths.train_pool, teacher_fp, source_fp)
        attacks, pool_tag = list(cfg.mid.attacks or store.attack_names), str(store.attrs.get("pool_id", ""))
        missing = [a for a in attacks if a not in store.attack_names]
        if missing:
            raise UserError(f"mid.attacks {missing} are not in the training pool {paths.train_pool} (it holds "
                            f"{list(store.attack_names)}); regenerate the pool with them in pool.attacks")
    if cfg.mid.use_distillation and cfg.mid.use_cc:
        warning = decoder_warning(float(read_checkpoint(teacher_path)["metrics"].get("recon_r2", 1.0)))
        if warning:
            log.warning("%s: %s", variant, warning)
    init_state, epoch = starting_state(cfg, paths, teacher_fp)
    segment = cfg.pool.refresh_every or cfg.mid.epochs
    tags = {"pool_id": pool_tag, "pool_refresh_every": str(cfg.pool.refresh_every),
            "attack_refresh_steps": str(cfg.mid.attack_refresh_steps), "variant": variant,
            "train_attacks": ",".join(attacks), "continue_from": str(cfg.mid.continue_from or ""),
            "executor": executor.name}
    with stage_run(cfg, "mid", method=method_name(cfg), extra_tags=tags, key=variant) as run_:
        while epoch < cfg.mid.epochs:
            version = epoch // segment if cfg.pool.refresh_every else 0
            end = min(cfg.mid.epochs, (version + 1) * segment)
            store_path = None
            if not generates_views(cfg.mid):
                store_path = paths.refreshed_pool(version, variant)
                if version > 0:
                    source = deployed_path(folder, version * segment)
                    t0 = time.perf_counter()
                    refreshed = generate_store(cfg, executor, store_path, "train", attacks, cfg.pool.eps,
                                               cfg.pool.steps, cfg.pool.step_size, cfg.data.train_limit, source,
                                               "deployed", cfg.seed + version,
                                               {"role": "train_pool", "refresh_epoch": version * segment,
                                                "pool_version": version})
                    run_.log_metrics({f"refresh/success_rate/{k}": v for k, v in refreshed.success_rates().items()},
                                     step=version * segment)
                    run_.log_metrics({"refresh/seconds": time.perf_counter() - t0}, step=version * segment)
                    open_training_store(store_path, teacher_fp, checkpoint_fingerprint(source))
            order = block_order(open_store(store_path).num_blocks, cfg.seed + version) if store_path else None
            m = cfg.mid
            executor.train("pipeline.stages.mid:train_worker",
                           {"config": cfg.to_dict(), "teacher_checkpoint": str(teacher_path),
                            "teacher_fingerprint": teacher_fp, "attacks": attacks, "end_epoch": end,
                            "state_dir": str(folder), "init_state": str(init_state) if init_state else None,
                            "pool_version": version, "tracking_uri": run_.tracking_uri, "run_id": run_.run_id,
                            "ray_results": str(paths.ray_results)},
                           WorkerResources(m.num_workers, m.worker_cpus, m.use_gpu, m.torch_threads),
                           name=f"{cfg.name}-{variant}-seg{version}", store=store_path, block_order=order,
                           max_failures=1)
            latest = latest_state(folder)
            if latest is None or latest[1] < end:
                raise RuntimeError(f"MID training stopped before epoch {end}; see the log above (and "
                                   f"{paths.ray_results} for Ray's)")
            epoch = latest[1]
        final = deployed_path(folder, epoch)
        tmp = out.with_suffix(".pt.tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, tmp)
        os.replace(tmp, out)
        run_.log_metrics({f"final/{k}": float(v) for k, v in read_checkpoint(out)["metrics"].items()
                          if isinstance(v, (int, float))})
        run_.log_artifact(out, "models")
    return out
