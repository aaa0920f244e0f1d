"""The headline experiment driven by ``mid_core`` directly (no Ray, Zarr or MLflow): for a lent GPU machine.

    python scripts/headline_direct.py --config configs/mnist_lenet5_gpu.yaml --out OUT [--budget-s 540]

The same stages as ``scripts/reproduce.sh`` (same configs, models, attacks, losses and meta step), in one process,
with the data, pools and fixed test sets held in device memory instead of Zarr stores:

1. the teacher (E_t, C_t, D_t) and the transfer substitute, ``teacher.epochs`` each;
2. the training pool: ``pool.attacks`` against the teacher on the training set, quantised to 8 bits as the store is
   (skipped when no stage reads it: only ``at`` and online variants, and no step benchmark);
3. the fixed test sets: ``paper`` (every evaluation attack against the teacher, quantised like the paper store) and
   ``transfer`` (against the substitute); CW and JSMA on the first ``evaluation.slow_attack_limit`` images;
   ``--fixed-sets PATH`` saves them there, or loads them when the file exists (runs sharing one GPU share one set);
4. a step-time benchmark (clean step, MID second- and first-order step on stored views, MID step that generates its
   attacks online every batch as the official code does);
5. the training variants (``--variants``, default ``mid mid_refresh at``): a MID variant reads
   ``<config dir>/<config name>/<variant>.yaml`` when it exists (``pool.refresh_every`` > 0 regenerates the pool
   against the current deployed model, as ``jobs/train_mid.py`` does; ``mid.online_attacks: true`` generates each
   batch's views against it just before the step instead, a diagnostic the Ray job does not offer), ``at`` is
   Madry PGD adversarial training;
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
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO))

from mid_core.attacks import AttackSpec  # noqa: E402
from mid_core.checkpoint import load_robust_model, load_teacher, save_checkpoint  # noqa: E402
from mid_core.datasets import NUM_CLASSES, ImageData, load_dataset  # noqa: E402
from mid_core.evaluation import accuracy  # noqa: E402
from mid_core.meta_step import BENIGN  # noqa: E402
from mid_core.models import Teacher, classifier_of  # noqa: E402
from pipeline.config import ConfigError, ExperimentConfig, load_config  # noqa: E402
from pipeline.direct.attacks import attack_views, success_rates  # noqa: E402
from pipeline.direct.benchmark import step_benchmark  # noqa: E402
from pipeline.direct.budget import Clock, log, sync  # noqa: E402
from pipeline.direct.evaluation import DEFAULT_MIN_LEFT_S, fixed_rows, whitebox_row  # noqa: E402
from pipeline.direct.fixed_sets import load_fixed_sets, save_fixed_sets, sets_identity  # noqa: E402
from pipeline.direct.results import Results  # noqa: E402
from pipeline.direct.training import load_student_state, train_at, train_mid_variant, train_teacher_like  # noqa: E402
from pipeline.generation import SLOW_KINDS, attack_specs  # noqa: E402

TRAINING_SHARES = {"mid": 0.4, "mid_refresh": 0.4, "at": 0.2}  # of the training window; unknown variants: 0.3
WHITEBOX_ORDER = ("mid_refresh", "at", "mid")  # models attacked white-box first (the verdict's rows)


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
    p.add_argument("--fixed-sets", type=Path, default=None, metavar="PATH",
                   help="load the paper/transfer test sets from PATH if it exists (made for the same teacher and "
                        "settings), else generate them and save them there: parallel runs then share one set")
    p.add_argument("--whitebox-models", nargs="*", default=None, metavar="NAME",
                   help="white-box rows for these models only (default: every model of the run, the verdict's first)")
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
        names = ["teacher", *args.variants, *(e.partition("=")[0] for e in args.evaluate)]
        unknown = sorted(set(args.whitebox_models or []) - set(names))
        if unknown:
            raise ValueError(f"--whitebox-models {unknown}: not models of this run (they are {names})")
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
    ev = cfg.evaluation
    slow_n = min(ev.slow_attack_limit, len(test))
    set_protocols = [p_ for p_ in ("paper", "transfer") if p_ in ev.protocols]
    identity = sets_identity(cfg, teacher, len(test), slow_n)
    fixed: dict[str, dict[str, torch.Tensor]] = {}
    if args.fixed_sets is not None and args.fixed_sets.exists():
        t0 = time.perf_counter()
        try:
            fixed = load_fixed_sets(args.fixed_sets, identity, set_protocols, device)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results.stage("fixed_sets_loaded", time.perf_counter() - t0, path=str(args.fixed_sets), protocols=list(fixed))
        log(f"fixed test sets {list(fixed)} loaded from {args.fixed_sets}")
    substitute = teacher_like("substitute", cfg.seed + cfg.teacher.substitute_seed_offset, args.substitute) \
        if "transfer" in set_protocols and "transfer" not in fixed else None
    teacher_clf = classifier_of(teacher)

    # 2. training pool against the teacher (not needed when every MID variant generates its views online)
    t0 = time.perf_counter()
    pool_specs = attack_specs(cfg.pool.attacks, cfg.pool.eps, cfg.pool.steps, cfg.pool.step_size)
    pool = {BENIGN: torch.round(train.images * 255).to(torch.uint8)}
    if args.bench_repeats or any(not c.mid.online_attacks for c in variant_cfgs.values()):
        adv = attack_views(teacher_clf, train.images, train.labels, pool_specs, cfg.seed, cfg.pool.batch_size, True,
                           k, stable_seeds=True)
        pool.update(adv)
        sync(device)
        seconds = time.perf_counter() - t0
        results.stage("pool", seconds, images=len(train), attacks=list(pool_specs),
                      images_attacks_per_second=len(train) * len(pool_specs) / seconds,
                      success_rate=success_rates(teacher_clf, adv, train.labels))
        log(f"pool: {len(train)} images x {len(pool_specs)} attacks in {seconds:.1f}s")

    # 3. fixed test sets (generated, or loaded with --fixed-sets)
    eval_specs = attack_specs(ev.attacks, ev.eps, ev.steps, ev.step_size)
    for protocol, source, quantize in (("paper", teacher, True), ("transfer", substitute, False)):
        if protocol not in set_protocols or protocol in fixed:
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
        if args.fixed_sets is not None:  # after each protocol: a run waiting for the paper set can start
            save_fixed_sets(args.fixed_sets, fixed, identity)
            log(f"fixed test sets {list(fixed)} saved to {args.fixed_sets}")

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

    def record_curve(name: str, model: torch.nn.Module, info: dict[str, Any]) -> None:
        """Score ``model`` on the fixed sets after an epoch: ``info["curve"]`` gains one point, results.json is rewritten."""
        point = {"epoch": info["epochs_completed"]}
        for protocol, adversarial in fixed.items():
            row = fixed_rows(protocol, "", {name: model}, adversarial, test, ev.batch_size)[0]
            point[protocol] = {"benign": row["benign"], "average": row["average"], "worst_case": row["worst_case"]}
        info.setdefault("curve", []).append(point)
        results.data["training"][name] = info
        results.write()

    pending = list(args.variants)
    for variant in args.variants:
        window = clock.left() - args.eval_reserve_s
        shares = [TRAINING_SHARES.get(v, 0.3) for v in pending]
        cap = max(0.0, window) * shares[0] / sum(shares)
        pending.pop(0)
        log(f"{variant}: {cap:.0f}s of the {clock.left():.0f}s left")
        t0 = time.perf_counter()
        if variant == "at":
            def at_epoch(model: torch.nn.Module, info: dict[str, Any]) -> None:
                """Checkpoint after every epoch and record the fixed-set curve, as for the MID variants."""
                save("at", model, "standard", cfg, {**info, "seed": cfg.seed + cfg.at.seed_offset})
                record_curve("at", model, info)

            model, info = train_at(cfg, train, test, cap, device, on_epoch=at_epoch)
        else:
            vcfg = variant_cfgs[variant]
            vattacks = list(vcfg.mid.attacks or vcfg.pool.attacks)
            vspecs = attack_specs(vattacks, vcfg.pool.eps, vcfg.pool.steps, vcfg.pool.step_size)
            missing = {a: s_ for a, s_ in vspecs.items() if a not in pool and not vcfg.mid.online_attacks}
            if missing:  # a variant training on attacks the shared pool lacks: generate them against the teacher
                t1 = time.perf_counter()
                pool.update(attack_views(teacher_clf, train.images, train.labels, missing, cfg.seed,
                                         cfg.pool.batch_size, True, k, stable_seeds=True))
                results.stage(f"pool_extra_{variant}", time.perf_counter() - t1, attacks=list(missing))
            variant_pool = {BENIGN: pool[BENIGN], **({} if vcfg.mid.online_attacks else {a: pool[a] for a in vattacks})}

            def regenerate(deployed: torch.nn.Module, epoch: int, vcfg: ExperimentConfig = vcfg,
                           vspecs: dict[str, AttackSpec] = vspecs) -> dict[str, torch.Tensor]:
                return attack_views(deployed, train.images, train.labels, vspecs, vcfg.seed + epoch,
                                    vcfg.pool.batch_size, True, k, stable_seeds=True)

            def online(deployed: torch.nn.Module, idx: torch.Tensor, step: int, vcfg: ExperimentConfig = vcfg,
                       vspecs: dict[str, AttackSpec] = vspecs) -> dict[str, torch.Tensor]:
                """The batch's views against the current deployed model (``mid.online_attacks``), quantised as the
                store's; one seed per step."""
                return attack_views(deployed, train.images[idx], train.labels[idx], vspecs, vcfg.seed + step,
                                    len(idx), True, k, stable_seeds=True, fused=vcfg.mid.online_fused)

            def on_epoch(deployed: torch.nn.Module, info: dict[str, Any], variant: str = variant,
                         vcfg: ExperimentConfig = vcfg) -> None:
                """Checkpoint after every epoch (a run stopped at its limit keeps it) and record the fixed-set curve."""
                save(variant, deployed, "deployed", vcfg, {**info, "seed": vcfg.seed})
                record_curve(variant, deployed, info)

            model, info = train_mid_variant(vcfg, teacher, variant_pool, train.labels, test, cap, device, regenerate,
                                            init=inits.get(variant), on_epoch=on_epoch,
                                            online=online if vcfg.mid.online_attacks else None)
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
        if args.whitebox_models is not None:
            order = [m for m in order if m in args.whitebox_models]
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
