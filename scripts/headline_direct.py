"""The headline experiment driven by ``mid_core`` directly (no Ray, Zarr or MLflow): for a lent GPU machine.

    python scripts/headline_direct.py --config configs/mnist_lenet5_gpu.yaml --out OUT [--budget-s 540]

The same stages as ``scripts/reproduce.sh`` (same configs, models, attacks, losses and meta step), in one process,
with the data, pools and fixed test sets held in device memory instead of Zarr stores:

1. the teacher (E_t, C_t, D_t) and the transfer substitute, ``teacher.epochs`` each;
2. the training pool: ``pool.attacks`` against the teacher on the training set, quantised to 8 bits as the store is;
3. the fixed test sets: ``paper`` (every evaluation attack against the teacher, quantised like the paper store) and
   ``transfer`` (against the substitute); CW and JSMA on the first ``evaluation.slow_attack_limit`` images;
4. a step-time benchmark (clean step, MID second- and first-order step on stored views, MID step that generates its
   attacks online every batch as the official code does);
5. the training variants (``--variants``, default ``mid mid_refresh at``): a MID variant reads
   ``<config dir>/<config name>/<variant>.yaml`` when it exists (``pool.refresh_every`` > 0 regenerates the pool
   against the current deployed model, as ``jobs/train_mid.py`` does), ``at`` is Madry PGD adversarial training;
6. evaluation: ``paper`` and ``transfer`` rows for every model, then ``whitebox`` rows (AutoAttack first, then the
   PGD-restarts verdict, then the other columns) while the budget lasts; a row cut short says which columns it lacks.

Budget: each training stage runs up to its configured epochs but starts no epoch it cannot finish inside its share
of the time left (``--eval-reserve-s`` is kept for stage 6). The epochs actually run are recorded in the results
and in each checkpoint; report them with the numbers.

Writes ``OUT/results.json`` (the format of ``jobs/evaluate.py``'s ``results.json`` plus stage times, training
histories and benchmark figures; rewritten after every stage, so a run stopped at its time limit still returns what
it finished) and ``OUT/<model>.pt`` (weights-only checkpoints that ``mid_core.load_robust_model`` loads).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO))

from mid_core.attacks import PAPER_COLUMNS, AttackSpec, run_attack  # noqa: E402
from mid_core.checkpoint import load_robust_model, load_teacher, save_checkpoint  # noqa: E402
from mid_core.datasets import NUM_CLASSES, ImageData, load_dataset  # noqa: E402
from mid_core.evaluation import accuracy, evaluate_attack, run_sanity_checks, summarize_row  # noqa: E402
from mid_core.meta_step import BENIGN, apply_grads, draw_held_out, meta_step  # noqa: E402
from mid_core.models import (  # noqa: E402
    DeployedModel, StandardClassifier, Teacher, classifier_of, classifier_student_from_teacher, student_from_teacher,
)
from mid_core.quantize import quantize_adversarial  # noqa: E402
from mid_core.training import adversarial_epoch, reconstruction_r2, shuffled_batches, teacher_epoch  # noqa: E402
from pipeline.config import ConfigError, ExperimentConfig, load_config  # noqa: E402
from pipeline.generation import SLOW_KINDS, attack_specs, block_seed  # noqa: E402
from pipeline.train_mid import meta_config  # noqa: E402

TRAINING_SHARES = {"mid": 0.4, "mid_refresh": 0.4, "at": 0.2}  # of the training window; unknown variants: 0.3
WHITEBOX_ORDER = ("mid_refresh", "at", "mid")  # models attacked white-box first (the verdict's rows)


class Clock:
    """Wall time since start against a budget (seconds)."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.perf_counter(), float(budget_s)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def log(message: str) -> None:
    print(f"[headline {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Results:
    """``results.json`` in ``jobs/evaluate.py``'s format, plus stages / histories / benchmarks; written atomically."""

    def __init__(self, path: Path, cfg: ExperimentConfig, test_images: int, device: torch.device) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "config": cfg.to_dict(), "rows": [], "test_images": test_images,
            "slow_attack_images": min(cfg.evaluation.slow_attack_limit, test_images),
            "driver": "scripts/headline_direct.py (mid_core directly: no Ray, Zarr or MLflow)",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "stages": {}, "training": {}, "benchmarks": {}, "skipped": [],
        }

    def stage(self, name: str, seconds: float, **extra: Any) -> None:
        self.data["stages"][name] = {"seconds": round(seconds, 2), **extra}
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------------------- attacks


def attack_views(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, specs: dict[str, AttackSpec],
                 seed: int, batch_size: int, quantize: bool, num_classes: int,
                 stable_seeds: bool = False) -> dict[str, torch.Tensor]:
    """name -> adversarial images of ``images`` ``(N, C, H, W)``: uint8 quantised as the store does (``quantize``)
    or float in [0, 1]. Deterministic given ``seed``: one generator per attack, ``block_seed(seed, 0, index)`` with
    ``index`` the attack's position in ``specs``, or with ``stable_seeds`` its position in the paper's column order
    (so an attack gets the same draws in every pool it is part of; the two agree for PGD_N, PGD_T, MIM_N, MIM_T)."""
    out = {}
    for index, (name, spec) in enumerate(specs.items()):
        if stable_seeds and name in PAPER_COLUMNS:
            index = PAPER_COLUMNS.index(name)
        generator = torch.Generator().manual_seed(block_seed(seed, 0, index))
        parts = []
        for i in range(0, labels.shape[0], batch_size):
            x, y = images[i:i + batch_size], labels[i:i + batch_size]
            adv = run_attack(spec, model, x, y, num_classes=num_classes, generator=generator).adversarial
            if quantize:
                adv = quantize_adversarial(adv, x, spec.eps if spec.linf_eps is not None and spec.kind not in SLOW_KINDS else None)
            parts.append(adv)
        out[name] = torch.cat(parts)
    return out


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def success_rates(model: torch.nn.Module, views: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Fraction of each view the model misclassifies (untargeted success; a targeted view's misses count too)."""
    return {name: 1.0 - accuracy(model, as_float(v), labels, batch_size=10_000) for name, v in views.items()}


# ---------------------------------------------------------------------------------------------------- training


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


def epoch_fits(epochs_done: int, used_s: float, cap_s: float) -> bool:
    """Start another epoch only if the mean epoch so far still fits in the cap (the first always runs)."""
    return epochs_done == 0 or used_s + used_s / epochs_done <= cap_s


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
                      ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """MID on an in-memory pool (``pool``: ``BENIGN`` and each attack -> uint8 ``(N, C, H, W)``), as the Ray worker
    does: Adam, one meta step per batch, held-out domain ``draw_held_out(domains, seed, step)``; with
    ``pool.refresh_every`` = K the attack views are replaced by ``regenerate(deployed, epoch)`` every K epochs
    (not after the last epoch that will run).

    ``init``: a deployed checkpoint of this script to continue from (student weights, epoch and step numbering;
    the Adam state starts fresh, so this is not exactly one longer run, and the info says so).
    ``on_epoch(deployed, info)`` runs after every epoch (e.g. to checkpoint and score the model)."""
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
    attacks = [a for a in pool if a != BENIGN]
    domains = [BENIGN, *attacks]
    n, b = labels.shape[0], cfg.mid.batch_size
    used, history, refreshes = 0.0, [], []
    held_counts = {d: 0 for d in domains}
    info: dict[str, Any] = {"epochs_planned": cfg.mid.epochs, "history": history, "refreshes": refreshes,
                            "attacks": attacks, "held_out_count": held_counts,
                            "init_from": str(init) if init else None, "start_epoch": start_epoch,
                            "optimizer_state": "fresh Adam at start_epoch" if init else "from scratch"}
    validation = test.subset(cfg.evaluation.limit or 1000)
    for epoch in range(start_epoch, cfg.mid.epochs):
        if not epoch_fits(epoch - start_epoch, used, cap_s):
            break
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch * 7919)).to(device)
        sums: dict[str, float] = {}
        batches = 0
        for i in range(0, n - b + 1, b):  # drop_last, as the Ray worker
            idx = order[i:i + b]
            views = {d: pool[d][idx].float().div_(255.0) for d in domains}
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


def train_at(cfg: ExperimentConfig, train: ImageData, test: ImageData, cap_s: float,
             device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Madry PGD adversarial training of a standard classifier (seed + ``at.seed_offset``), as jobs/train_teacher.py."""
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
        log(f"at epoch {epoch + 1}/{cfg.at.epochs} " + " ".join(f"{k_}={v:.4f}" for k_, v in metrics.items()))
    return model, {"epochs_completed": len(history), "epochs_planned": cfg.at.epochs, "seconds": used, "history": history}


# --------------------------------------------------------------------------------------------------- benchmark


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def step_benchmark(cfg: ExperimentConfig, teacher: Teacher, pool: dict[str, torch.Tensor], labels: torch.Tensor,
                   specs: dict[str, AttackSpec], device: torch.device, repeats: int) -> dict[str, Any]:
    """Seconds per training step on one batch already on the device: clean E+C step, MID step from stored views
    (second and first order), and a MID step that first generates its attacks against the teacher (online, as the
    official code). Ratios are benchmark 1a (MID vs clean) and 1b (online vs stored) per step."""
    import copy
    import dataclasses

    import torch.nn.functional as F

    b = cfg.mid.batch_size
    idx = torch.arange(b, device=device)
    views = {d: pool[d][idx].float().div_(255.0) for d in pool}
    y = labels[idx]
    domains = sorted(views)
    clean_model = copy.deepcopy(classifier_of(teacher)).train()
    for p in clean_model.parameters():
        p.requires_grad_(True)
    clean_opt = torch.optim.Adam(clean_model.parameters(), lr=cfg.mid.lr)

    def clean_step() -> None:
        loss = F.cross_entropy(clean_model(views[BENIGN]), y)
        clean_opt.zero_grad(set_to_none=True)
        loss.backward()
        clean_opt.step()

    def mid_step_fn(first_order: bool, online: bool) -> Callable[[], None]:
        student = student_from_teacher(teacher, "teacher").to(device)
        opt = torch.optim.Adam(student.parameters(), lr=cfg.mid.lr)
        mcfg = dataclasses.replace(meta_config(cfg), first_order=first_order)
        counter = [0]
        gen = torch.Generator().manual_seed(0)

        def step() -> None:
            v = views
            if online:
                v = {BENIGN: views[BENIGN]}
                for name, spec in specs.items():
                    v[name] = run_attack(spec, classifier_of(teacher), views[BENIGN], y, generator=gen).adversarial
            result = meta_step(student, teacher, v, y, draw_held_out(domains, cfg.seed, counter[0]), mcfg)
            apply_grads(student, result.grads)
            opt.step()
            opt.zero_grad(set_to_none=True)
            counter[0] += 1

        return step

    t = {"clean": time_call(clean_step, device, repeats),
         "mid_second_order": time_call(mid_step_fn(False, False), device, repeats),
         "mid_first_order": time_call(mid_step_fn(True, False), device, repeats),
         "mid_online_second_order": time_call(mid_step_fn(False, True), device, max(3, repeats // 4), warmup=1)}
    return {"seconds_per_step": t, "batch_size": b, "repeats": repeats,
            "ratio_1a_second_order": t["mid_second_order"] / t["clean"],
            "ratio_1a_first_order": t["mid_first_order"] / t["clean"],
            "ratio_1b_online_vs_stored": t["mid_online_second_order"] / t["mid_second_order"],
            "goals": {"1a_second_order": "<= 20x", "1a_first_order": "<= 12x", "1b": ">= 8x"}}


# -------------------------------------------------------------------------------------------------- evaluation


COLUMN_MIN_LEFT_S = {"AA_N": 60.0, "verdict": 20.0}  # start a white-box column only with this much budget left
DEFAULT_MIN_LEFT_S = 10.0


def whitebox_row(cfg: ExperimentConfig, name: str, model: torch.nn.Module, test: ImageData,
                 specs: dict[str, AttackSpec], clock: Clock, results: Results) -> dict[str, Any]:
    """White-box row of one model: AutoAttack first, the PGD-restarts verdict, then the other columns, each started
    only while enough budget is left (``COLUMN_MIN_LEFT_S``). The row is in ``results`` from the start and rewritten
    after every column, so a run stopped at its limit keeps what finished; it lists the columns it skipped."""
    from pipeline.evaluate import whitebox_verdict

    ev = cfg.evaluation
    n_test = len(test)
    x, y = test.images[:ev.limit or n_test], test.labels[:ev.limit or n_test]
    values = {"benign": accuracy(model, x, y, ev.batch_size)}
    bounded: dict[str, torch.Tensor] = {}
    row: dict[str, Any] = {"protocol": "whitebox", "model": name, "seconds": {}, "skipped_columns": []}
    results.data["rows"].append(row)
    order = (["AA_N"] if "AA_N" in specs else []) + ["verdict"] + [c for c in specs if c != "AA_N"]
    for column in order:
        if clock.left() < COLUMN_MIN_LEFT_S.get(column, DEFAULT_MIN_LEFT_S):
            row["skipped_columns"].append(column)
            continue
        t0 = time.perf_counter()
        if column == "verdict":
            if ev.verdict_pgd_restarts:
                row["verdict"] = whitebox_verdict(cfg, model, x, y, values, bounded)
                log(f"whitebox {name} verdict: {row['verdict']}")
        else:
            spec = specs[column]
            n = min(ev.slow_attack_limit, n_test) if spec.kind in SLOW_KINDS else x.shape[0]
            result, adv = evaluate_attack(spec, model, test.images[:n], test.labels[:n], batch_size=ev.batch_size,
                                          seed=cfg.seed + list(specs).index(column))
            values[column] = result.accuracy
            if spec.kind not in SLOW_KINDS:
                bounded[column] = adv
            log(f"whitebox {name} {column}: {result.accuracy:.4f} on {n} images ({time.perf_counter() - t0:.1f}s)")
        row["seconds"][column] = time.perf_counter() - t0
        if len(values) > 1:
            row.update(summarize_row(values))
        results.write()
    pgd = [s for s in specs.values() if s.kind == "pgd" and not s.targeted]
    row["sanity_warnings"] = run_sanity_checks(
        clean_accuracy=values["benign"], robust={k: v for k, v in values.items() if k != "benign"}, clean_images=x,
        adversarial=bounded, specs=specs, model=model, images=x, labels=y, masking_eps=ev.eps,
        more_steps_specs=pgd[:1] if "PGD_N" in values else [], seed=cfg.seed, warn=False)
    if row["skipped_columns"]:
        results.data["skipped"].append(f"whitebox {name}: {row['skipped_columns']} (budget)")
    results.write()
    return row


def fixed_rows(protocol: str, source: str, models: dict[str, torch.nn.Module], adversarial: dict[str, torch.Tensor],
               test: ImageData, batch_size: int) -> list[dict[str, Any]]:
    """``paper`` / ``transfer`` rows: every model scored on the same precomputed adversarial images."""
    rows = []
    for name, model in models.items():
        values = {"benign": accuracy(model, test.images, test.labels, batch_size)}
        for column, adv in adversarial.items():
            values[column] = accuracy(model, as_float(adv), test.labels[:adv.shape[0]], batch_size)
        rows.append({"protocol": protocol, "model": name, **summarize_row(values), "source": source})
    return rows


# --------------------------------------------------------------------------------------------------------- main


def variant_config(base_path: Path, cfg: ExperimentConfig, variant: str, overrides: list[str]) -> ExperimentConfig:
    """The config of MID variant ``variant``: ``<config dir>/<name>/<variant>.yaml`` if it exists, else the base
    config with ``mid.variant`` set (so ``mid`` needs no file)."""
    path = base_path.parent / cfg.name / f"{variant}.yaml"
    if path.exists():
        return load_config(path, overrides, check_data=False)
    if variant != "mid":
        raise ConfigError(f"no config for variant {variant!r}: expected {path} (with `base: ../{base_path.name}`)")
    return cfg


def parse_inits(items: list[str], mid_variants: list[str], teacher: Path | None) -> dict[str, Path]:
    """``VARIANT=PATH`` options -> {variant: checkpoint}; each variant must be trained in this run, the file must
    exist, and the teacher it was trained with must be given (``--teacher``)."""
    inits = {}
    for item in items:
        variant, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--init-from takes VARIANT=PATH, got {item!r}")
        if variant not in mid_variants:
            raise ValueError(f"--init-from {variant!r}: not a MID variant of this run ({mid_variants})")
        if not Path(path).exists():
            raise FileNotFoundError(f"--init-from {variant}: {path} does not exist")
        inits[variant] = Path(path)
    if inits and teacher is None:
        raise ValueError("--init-from needs --teacher (the teacher the checkpoint was trained with)")
    return inits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="experiment config, e.g. configs/mnist_lenet5_gpu.yaml")
    p.add_argument("--out", required=True, type=Path, help="folder for results.json and the checkpoints")
    p.add_argument("--variants", nargs="*", default=["mid", "mid_refresh", "at"],
                   help="training stages in order: MID variants (config files beside the config) and/or 'at'")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-time budget of the whole run (seconds)")
    p.add_argument("--eval-reserve-s", type=float, default=170.0, help="part of the budget kept for evaluation")
    p.add_argument("--bench-repeats", type=int, default=30, help="timed steps per kind in the step benchmark (0: skip)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--teacher", type=Path, default=None, help="load this teacher checkpoint instead of training one")
    p.add_argument("--substitute", type=Path, default=None, help="load this substitute instead of training one")
    p.add_argument("--init-from", action="append", default=[], metavar="VARIANT=PATH",
                   help="continue MID variant VARIANT from a deployed checkpoint of this script (needs --teacher)")
    p.add_argument("--evaluate", action="append", default=[], metavar="NAME=PATH",
                   help="also evaluate this checkpoint (any kind load_robust_model loads) as row NAME")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to the base config and every variant, e.g. --set mid.epochs=2")
    args = p.parse_args(argv)
    clock = Clock(args.budget_s)
    try:
        cfg = load_config(args.config, args.overrides)
        mid_variants = [v for v in args.variants if v != "at"]
        variant_cfgs = {v: variant_config(args.config, cfg, v, args.overrides) for v in mid_variants}
        for v, vcfg in variant_cfgs.items():
            mine = (vcfg.pool.eps, vcfg.pool.steps, vcfg.pool.step_size, vcfg.pool.source)
            if mine != (cfg.pool.eps, cfg.pool.steps, cfg.pool.step_size, cfg.pool.source):
                raise ConfigError(f"variant {v!r} changes pool eps/steps/step_size/source; the variants of one run "
                                  "share the pool's settings (they may choose its attacks with mid.attacks or "
                                  "pool.attacks): run it with its own --config instead")
        inits = parse_inits(args.init_from, mid_variants, args.teacher)
        bad = [e for e in args.evaluate if "=" not in e or not Path(e.partition("=")[2]).exists()]
        if bad:
            raise ValueError(f"--evaluate takes NAME=PATH of an existing checkpoint, got {bad}")
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = device.type == "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    k = NUM_CLASSES[cfg.data.dataset]

    t0 = time.perf_counter()
    train = load_dataset(cfg.data.dataset, "train", cfg.data.root, cfg.data.download).subset(cfg.data.train_limit)
    test = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).subset(cfg.evaluation.limit)
    train = ImageData(train.images.to(device), train.labels.to(device), train.name, train.split)
    test = ImageData(test.images.to(device), test.labels.to(device), test.name, test.split)
    results = Results(args.out / "results.json", cfg, len(test), device)
    results.stage("data", time.perf_counter() - t0, train_images=len(train), test_images=len(test))
    log(f"device {results.data['device']}, torch {torch.__version__}; {len(train)} train / {len(test)} test images; "
        f"budget {args.budget_s:.0f}s")

    def save(name: str, model: torch.nn.Module, kind: str, config: ExperimentConfig, metrics: dict[str, Any]) -> None:
        save_checkpoint(args.out / f"{name}.pt", model, kind=kind, backbone=cfg.model.backbone, config=config.to_dict(),
                        metrics={k_: v for k_, v in metrics.items() if k_ != "history"}, in_channels=train.images.shape[1],
                        num_classes=k)

    # 1. teacher and substitute (trained, or loaded with --teacher / --substitute)
    def teacher_like(role: str, seed: int, given: Path | None) -> Teacher:
        t0 = time.perf_counter()
        if given is not None:
            model = load_teacher(given).to(device).freeze()
            results.stage(role, time.perf_counter() - t0, loaded_from=str(given),
                          test_accuracy=accuracy(classifier_of(model), test.images, test.labels, 10_000))
            return model
        model, info = train_teacher_like(cfg, seed, train, test, device)
        model.freeze()
        save(role, model, "teacher", cfg, {**info, "seed": seed})
        results.data["training"][role] = info
        results.stage(role, time.perf_counter() - t0, recon_r2=info["recon_r2"], test_accuracy=info["test_accuracy"])
        return model

    teacher = teacher_like("teacher", cfg.seed, args.teacher)
    try:  # a continuation of a checkpoint trained with another teacher fails now, not after the pools are built
        for path in inits.values():
            load_student_state(path, teacher)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    substitute = teacher_like("substitute", cfg.seed + cfg.teacher.substitute_seed_offset, args.substitute) \
        if "transfer" in cfg.evaluation.protocols else None
    teacher_clf = classifier_of(teacher)

    # 2. training pool against the teacher
    t0 = time.perf_counter()
    pool_specs = attack_specs(cfg.pool.attacks, cfg.pool.eps, cfg.pool.steps, cfg.pool.step_size)
    adv = attack_views(teacher_clf, train.images, train.labels, pool_specs, cfg.seed, cfg.pool.batch_size, True, k,
                       stable_seeds=True)
    pool = {BENIGN: torch.round(train.images * 255).to(torch.uint8), **adv}
    sync(device)
    seconds = time.perf_counter() - t0
    results.stage("pool", seconds, images=len(train), attacks=list(pool_specs),
                  images_attacks_per_second=len(train) * len(pool_specs) / seconds,
                  success_rate=success_rates(teacher_clf, adv, train.labels))
    log(f"pool: {len(train)} images x {len(pool_specs)} attacks in {seconds:.1f}s")

    # 3. fixed test sets
    ev = cfg.evaluation
    eval_specs = attack_specs(ev.attacks, ev.eps, ev.steps, ev.step_size)
    slow_n = min(ev.slow_attack_limit, len(test))
    fixed: dict[str, dict[str, torch.Tensor]] = {}
    for protocol, source, quantize in (("paper", teacher, True), ("transfer", substitute, False)):
        if protocol not in ev.protocols:
            continue
        source = classifier_of(source)
        t0 = time.perf_counter()
        fixed[protocol] = {}
        for index, (name, spec) in enumerate(eval_specs.items()):
            n = slow_n if spec.kind in SLOW_KINDS else len(test)
            seed = cfg.seed + (10_000 if protocol == "transfer" else 0) + index
            fixed[protocol].update(attack_views(source, test.images[:n], test.labels[:n], {name: spec}, seed,
                                                ev.batch_size, quantize, k))
        sync(device)
        results.stage(f"{protocol}_test_set", time.perf_counter() - t0, attacks=list(eval_specs), slow_images=slow_n)
        log(f"{protocol} test set: {len(eval_specs)} attacks in {time.perf_counter() - t0:.1f}s")

    # 4. step benchmark
    if args.bench_repeats:
        t0 = time.perf_counter()
        results.data["benchmarks"]["steps"] = step_benchmark(cfg, teacher, pool, train.labels, pool_specs, device,
                                                             args.bench_repeats)
        results.stage("step_benchmark", time.perf_counter() - t0)
        log(f"step benchmark: {results.data['benchmarks']['steps']}")

    # 5. training stages
    models: dict[str, torch.nn.Module] = {"teacher": teacher_clf}
    for item in args.evaluate:
        name, _, path = item.partition("=")
        models[name] = load_robust_model(path).to(device)
    pending = list(args.variants)
    for variant in args.variants:
        window = clock.left() - args.eval_reserve_s
        shares = [TRAINING_SHARES.get(v, 0.3) for v in pending]
        cap = max(0.0, window) * shares[0] / sum(shares)
        pending.pop(0)
        log(f"{variant}: {cap:.0f}s of the {clock.left():.0f}s left")
        t0 = time.perf_counter()
        if variant == "at":
            model, info = train_at(cfg, train, test, cap, device)
            save("at", model, "standard", cfg, {**info, "seed": cfg.seed + cfg.at.seed_offset})
        else:
            vcfg = variant_cfgs[variant]
            vattacks = list(vcfg.mid.attacks or vcfg.pool.attacks)
            vspecs = attack_specs(vattacks, vcfg.pool.eps, vcfg.pool.steps, vcfg.pool.step_size)
            missing = {a: s_ for a, s_ in vspecs.items() if a not in pool}
            if missing:  # a variant training on attacks the shared pool lacks: generate them against the teacher
                t1 = time.perf_counter()
                pool.update(attack_views(teacher_clf, train.images, train.labels, missing, cfg.seed,
                                         cfg.pool.batch_size, True, k, stable_seeds=True))
                results.stage(f"pool_extra_{variant}", time.perf_counter() - t1, attacks=list(missing))
            variant_pool = {BENIGN: pool[BENIGN], **{a: pool[a] for a in vattacks}}

            def regenerate(deployed: torch.nn.Module, epoch: int, vcfg: ExperimentConfig = vcfg,
                           vspecs: dict[str, AttackSpec] = vspecs) -> dict[str, torch.Tensor]:
                return attack_views(deployed, train.images, train.labels, vspecs, vcfg.seed + epoch,
                                    vcfg.pool.batch_size, True, k, stable_seeds=True)

            def on_epoch(deployed: torch.nn.Module, info: dict[str, Any], variant: str = variant,
                         vcfg: ExperimentConfig = vcfg) -> None:
                """Checkpoint after every epoch (a run stopped at its limit keeps it) and record the fixed-set curve."""
                save(variant, deployed, "deployed", vcfg, {**info, "seed": vcfg.seed})
                point = {"epoch": info["epochs_completed"]}
                for protocol, adversarial in fixed.items():
                    row = fixed_rows(protocol, "", {variant: deployed}, adversarial, test, ev.batch_size)[0]
                    point[protocol] = {"benign": row["benign"], "average": row["average"], "worst_case": row["worst_case"]}
                info.setdefault("curve", []).append(point)
                results.data["training"][variant] = info
                results.write()

            model, info = train_mid_variant(vcfg, teacher, variant_pool, train.labels, test, cap, device, regenerate,
                                            init=inits.get(variant), on_epoch=on_epoch)
        info["cap_seconds"] = cap
        models[variant] = model
        results.data["training"][variant] = info
        results.stage(variant, time.perf_counter() - t0, epochs_completed=info["epochs_completed"],
                      epochs_planned=info["epochs_planned"])

    # 6. evaluation
    for m in models.values():
        m.eval()
        for p_ in m.parameters():
            p_.requires_grad_(False)
    for protocol, source in (("paper", "teacher"), ("transfer", "substitute")):
        if protocol in fixed:
            t0 = time.perf_counter()
            results.data["rows"] += fixed_rows(protocol, source, models, fixed[protocol], test, ev.batch_size)
            results.stage(f"{protocol}_rows", time.perf_counter() - t0)
    if "whitebox" in ev.protocols:
        order = [m for m in WHITEBOX_ORDER if m in models] + [m for m in models if m not in WHITEBOX_ORDER]
        for name in order:
            t0 = time.perf_counter()
            if clock.left() < DEFAULT_MIN_LEFT_S:
                results.data["skipped"].append(f"whitebox {name} (budget)")
                continue
            whitebox_row(cfg, name, models[name], test, eval_specs, clock, results)
            results.stage(f"whitebox_{name}", time.perf_counter() - t0)
    results.data["total_seconds"] = clock.elapsed()
    results.write()
    for r in results.data["rows"]:
        if "average" in r:
            log(f"{r['protocol']:8s} {r['model']:12s} benign {100 * r['benign']:.2f} average {100 * r['average']:.2f} "
                f"worst {100 * r['worst_case']:.2f}" + (f" verdict {r['verdict']}" if r.get("verdict") else ""))
    log(f"done in {clock.elapsed():.0f}s; skipped: {results.data['skipped'] or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
