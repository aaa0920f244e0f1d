"""Training stages of a direct run on in-memory data: teacher-like models, MID variants, Madry AT."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from mid_core.attacks import run_attack
from mid_core.datasets import NUM_CLASSES, ImageData
from mid_core.evaluation import accuracy
from mid_core.meta_step import BENIGN, apply_grads, draw_held_out, meta_step
from mid_core.models import (
    DeployedModel, StandardClassifier, Teacher, classifier_of, classifier_student_from_teacher, student_from_teacher,
)
from mid_core.training import adversarial_epoch, reconstruction_r2, set_learning_rate, shuffled_batches, teacher_epoch
from pipeline.config import ExperimentConfig
from pipeline.direct.attacks import success_rates
from pipeline.direct.budget import epoch_fits, log, sync
from pipeline.generation import attack_specs
from pipeline.train_mid import meta_config

PROGRESS_EVERY_S = 120.0  # seconds between progress lines inside a training epoch


def train_teacher_like(cfg: ExperimentConfig, seed: int, train: ImageData, test: ImageData,
                       device: torch.device) -> tuple[Teacher, dict[str, Any]]:
    """Teacher autoencoder-classifier (or the substitute): ``teacher.epochs`` of CE + reconstruction."""
    torch.manual_seed(seed)
    k = NUM_CLASSES[cfg.data.dataset]
    model = Teacher.from_backbone(cfg.model.backbone, train.images.shape[1], k).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.teacher.lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(cfg.teacher.epochs):
        t0 = time.perf_counter()
        batches = shuffled_batches(train.images, train.labels, cfg.teacher.batch_size, gen)
        metrics = teacher_epoch(model, batches, opt, cfg.teacher.recon_loss, cfg.teacher.recon_weight)
        metrics["test_accuracy"] = accuracy(classifier_of(model), test.images, test.labels, 10_000)
        sync(device)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        history.append(metrics)
        log(f"seed {seed} epoch {epoch + 1}/{cfg.teacher.epochs} " + " ".join(f"{k_}={v:.4f}" for k_, v in metrics.items()))
    r2 = reconstruction_r2(model, test.images)
    return model, {"history": history, "recon_r2": r2, "test_accuracy": history[-1]["test_accuracy"] if history else None}


def load_student_state(path: Path, teacher: Teacher) -> tuple[dict[str, torch.Tensor], int, int]:
    """The student encoder weights, epochs and steps of a deployed MID checkpoint written by this script, checked to
    sit on ``teacher``'s head (a MID model deploys E_s then the frozen C_t, so a different head means another teacher)."""
    from mid_core.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    if payload["kind"] != "deployed":
        raise ValueError(f"{path} is a {payload['kind']!r} checkpoint; --init-from needs a deployed MID model")
    state = payload["state_dict"]
    head = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
    mine = teacher.classifier.state_dict()
    if head.keys() != mine.keys() or any(not torch.equal(head[k].cpu(), mine[k].cpu()) for k in head):
        raise ValueError(f"{path} was trained with another teacher (its classifier head differs from --teacher's); "
                         "pass the teacher it was trained with")
    metrics = payload.get("metrics", {})
    if "epochs_completed" not in metrics or "steps" not in metrics:
        raise ValueError(f"{path} records no epochs_completed/steps: --init-from takes checkpoints of this script only")
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return encoder, int(metrics["epochs_completed"]), int(metrics["steps"])


def train_mid_variant(cfg: ExperimentConfig, teacher: Teacher, pool: dict[str, torch.Tensor], labels: torch.Tensor,
                      test: ImageData, cap_s: float, device: torch.device,
                      regenerate: Callable[[torch.nn.Module, int], dict[str, torch.Tensor]],
                      init: Path | None = None,
                      on_epoch: Callable[[torch.nn.Module, dict[str, Any]], None] | None = None,
                      online: Callable[[torch.nn.Module, torch.Tensor, int], dict[str, torch.Tensor]] | None = None,
                      ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """MID on an in-memory pool (``pool``: ``BENIGN`` and each attack -> uint8 ``(N, C, H, W)``), as the Ray worker
    does: Adam, one meta step per batch, held-out domain ``draw_held_out(domains, seed, step)``; with
    ``pool.refresh_every`` = K the attack views are replaced by ``regenerate(deployed, epoch)`` every K epochs
    (not after the last epoch that will run).

    ``init``: a deployed checkpoint of this script to continue from (student weights, epoch and step numbering;
    the Adam state starts fresh, so this is not exactly one longer run, and the info says so).
    ``on_epoch(deployed, info)`` runs after every epoch (e.g. to checkpoint and score the model).
    ``online(deployed, idx, step)`` (required with ``mid.online_attacks``): the uint8 attack views
    ``(len(idx), C, H, W)`` of the batch ``idx`` generated against the current deployed model, used instead of
    the pool's (which then needs only ``BENIGN``); their generation time is logged as ``attack_seconds``."""
    if cfg.mid.online_attacks != (online is not None):
        raise ValueError("mid.online_attacks and the online view generator go together: pass online= exactly when "
                         "the config sets mid.online_attacks: true")
    torch.manual_seed(cfg.seed)
    if cfg.mid.use_distillation:  # student encoder E_s; deployed = E_s then the frozen C_t
        student = student_from_teacher(teacher, cfg.mid.student_init).to(device)
        deployed: torch.nn.Module = DeployedModel(student, teacher.classifier)
    else:  # Table 8 "no DST" rows / ERM: a whole classifier trained with cross-entropy, deployed as it is
        student = deployed = classifier_student_from_teacher(teacher, cfg.mid.student_init).to(device)
    start_epoch, step = 0, 0
    if init is not None:
        if not cfg.mid.use_distillation:
            raise ValueError("--init-from continues distillation variants only (their checkpoint holds E_s and C_t)")
        weights, start_epoch, step = load_student_state(init, teacher)
        student.load_state_dict(weights)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.mid.lr)
    mcfg = meta_config(cfg)
    attacks = list(cfg.mid.attacks or cfg.pool.attacks) if online else [a for a in pool if a != BENIGN]
    domains = [BENIGN, *attacks]
    n, b = labels.shape[0], cfg.mid.batch_size
    used, history, refreshes = 0.0, [], []
    held_counts = {d: 0 for d in domains}
    info: dict[str, Any] = {"epochs_planned": cfg.mid.epochs, "history": history, "refreshes": refreshes,
                            "attacks": attacks, "held_out_count": held_counts,
                            "init_from": str(init) if init else None, "start_epoch": start_epoch,
                            "online_attacks": online is not None,
                            "optimizer_state": "fresh Adam at start_epoch" if init else "from scratch"}
    validation = test.subset(cfg.evaluation.limit or 1000)
    for epoch in range(start_epoch, cfg.mid.epochs):
        if not epoch_fits(epoch - start_epoch, used, cap_s):
            break
        set_learning_rate(opt, cfg.mid.lr_at(epoch))
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch * 7919)).to(device)
        sums: dict[str, float] = {}
        batches, last_log, attack_seconds = 0, t0, 0.0
        for i in range(0, n - b + 1, b):  # drop_last, as the Ray worker
            if time.perf_counter() - last_log > PROGRESS_EVERY_S:  # long epochs (CPU, online attacks) show progress
                last_log = time.perf_counter()
                log(f"{cfg.mid.variant} epoch {epoch + 1}: step {batches}/{n // b}, {last_log - t0:.0f}s")
            idx = order[i:i + b]
            if online is not None:
                t1 = time.perf_counter()
                batch = {BENIGN: pool[BENIGN][idx], **online(deployed, idx, step)}
                attack_seconds += time.perf_counter() - t1
            else:
                batch = {d: pool[d][idx] for d in domains}
            views = {d: batch[d].float().div_(255.0) for d in domains}
            held_out = draw_held_out(domains, cfg.seed, step)
            held_counts[held_out] += 1
            result = meta_step(student, teacher, views, labels[idx], held_out, mcfg)
            apply_grads(student, result.grads)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            batches += 1
            for k_, v in result.metrics.items():
                sums[k_] = sums.get(k_, 0.0) + v
        metrics = {k_: v / max(batches, 1) for k_, v in sums.items()}
        if online is not None:  # the epoch's online attack generation, in total
            metrics["attack_seconds"] = attack_seconds
        metrics["val_clean_accuracy"] = accuracy(deployed, validation.images, validation.labels, 10_000)
        student.train()
        sync(device)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        # refresh only for an epoch that will run: this epoch, plus a refresh as long as the last one, must fit
        last_refresh = refreshes[-1]["seconds"] if refreshes else 0.0
        next_epoch_runs = epoch + 1 < cfg.mid.epochs and epoch_fits(epoch + 1 - start_epoch,
                                                                    used + metrics["epoch_seconds"] + last_refresh, cap_s)
        if cfg.pool.refresh_every and (epoch + 1) % cfg.pool.refresh_every == 0 and next_epoch_runs:
            t1 = time.perf_counter()
            fresh = regenerate(deployed, epoch + 1)
            pool = {BENIGN: pool[BENIGN], **fresh}
            student.train()
            refreshes.append({"epoch": epoch + 1, "seconds": time.perf_counter() - t1,
                              "success_rate": success_rates(deployed, fresh, labels)})
            student.train()
            metrics["refresh_seconds"] = refreshes[-1]["seconds"]
        used += time.perf_counter() - t0
        metrics["epoch"] = epoch + 1
        metrics["lr"] = opt.param_groups[0]["lr"]  # the rate this epoch ran at
        history.append(metrics)
        info.update(epochs_completed=epoch + 1, steps=step, seconds=used)
        log(f"{cfg.mid.variant} epoch {epoch + 1}/{cfg.mid.epochs} loss={metrics.get('loss_total', float('nan')):.4f} "
            f"val_clean={metrics['val_clean_accuracy']:.4f} ({metrics['epoch_seconds']:.1f}s"
            + (f" + refresh {metrics['refresh_seconds']:.1f}s" if "refresh_seconds" in metrics else "") + f", {batches} steps)")
        if on_epoch is not None:
            on_epoch(deployed, info)
            student.train()
    info.setdefault("epochs_completed", start_epoch)
    info.setdefault("steps", step)
    info.setdefault("seconds", used)
    return deployed, info


def train_at(cfg: ExperimentConfig, train: ImageData, test: ImageData, cap_s: float, device: torch.device,
             on_epoch: Callable[[torch.nn.Module, dict[str, Any]], None] | None = None,
             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Madry PGD adversarial training of a standard classifier (seed + ``at.seed_offset``), as jobs/train_teacher.py.

    ``on_epoch(model, info)`` runs after every epoch (e.g. to checkpoint it, so a run stopped at its limit keeps it)."""
    seed = cfg.seed + cfg.at.seed_offset
    torch.manual_seed(seed)
    k = NUM_CLASSES[cfg.data.dataset]
    model = StandardClassifier.from_backbone(cfg.model.backbone, train.images.shape[1], k).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.at.lr)
    gen, attack_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    pgd = attack_specs(["PGD_N"], cfg.at.eps, cfg.at.steps, cfg.at.step_size)["PGD_N"]

    def madry_pgd(target: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return run_attack(pgd, target, x, y, num_classes=k, generator=attack_gen).adversarial

    used, history = 0.0, []
    info: dict[str, Any] = {"epochs_completed": 0, "epochs_planned": cfg.at.epochs, "seconds": 0.0, "history": history}
    for epoch in range(cfg.at.epochs):
        if not epoch_fits(epoch, used, cap_s):
            break
        t0 = time.perf_counter()
        metrics = adversarial_epoch(model, shuffled_batches(train.images, train.labels, cfg.at.batch_size, gen), opt, madry_pgd)
        metrics["test_accuracy"] = accuracy(model, test.images, test.labels, 10_000)
        sync(device)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        used += metrics["epoch_seconds"]
        history.append(metrics)
        info.update(epochs_completed=len(history), seconds=used)
        log(f"at epoch {epoch + 1}/{cfg.at.epochs} " + " ".join(f"{k_}={v:.4f}" for k_, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(model, info)
            model.train()
    return model, info
