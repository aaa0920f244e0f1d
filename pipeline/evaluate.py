"""Stage 4: robust accuracy per attack under the three protocols, side by side, each row labelled.

* ``paper``: the deployed model scored on the fixed test stores generated against the pool's source model
  (a transfer setting; this is how the paper's Table 2 was produced).
* ``whitebox``: every attack computed against the evaluated model itself, end to end (AutoAttack included).
* ``transfer``: attacks computed on the independently trained substitute, then scored (paper Table 3).

Rows are (protocol, model); columns are ``benign`` then the configured attack columns, then ``average``
(mean over attack columns) and ``worst_case`` (min over attack columns). CW and JSMA run on the first
``evaluation.slow_attack_limit`` test images (the column header says so). Writes ``table.md``,
``table.csv``, ``results.json`` and ``heatmap.png`` under ``<output_dir>/evaluation`` and logs them to MLflow.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ExperimentConfig
from pipeline.generation import SLOW_KINDS, attack_specs, checkpoint_fingerprint
from pipeline.paths import ExperimentPaths
from pipeline.ray_runtime import auto_threads
from pipeline.transfer_sets import load_transfer_set, save_transfer_set, transfer_identity


def model_checkpoint(paths: ExperimentPaths, role: str) -> Path:
    """The checkpoint of an evaluation row: teacher | standard | substitute | at | a MID variant name."""
    path = paths.model(role)
    if not path.exists():
        how = ("jobs/train_teacher.py (it trains teacher, substitute, standard and at as the config needs)"
               if role in ("teacher", "standard", "substitute", "at") else
               f"jobs/train_mid.py with mid.variant: {role}")
        raise FileNotFoundError(f"evaluation.models lists {role!r} but {path} does not exist; train it with {how}")
    return path


def _is_slow(name: str) -> bool:
    return name.startswith(("CW", "JSMA"))


def _row_limit(cfg: ExperimentConfig, name: str, n_test: int) -> int:
    limit = min(cfg.evaluation.limit or n_test, n_test)
    return min(limit, cfg.evaluation.slow_attack_limit) if _is_slow(name) else limit


def evaluate_models(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Compute every (protocol, model) row; pure torch apart from reading the paper stores."""
    from mid_core.checkpoint import load_classifier
    from mid_core.datasets import load_dataset
    from mid_core.evaluation import accuracy, evaluate_attack, score_fixed_adversarial, summarize_row
    from mid_core.attacks import run_attack
    from storage_schemas import open_store

    torch.set_num_threads(auto_threads(0, 1))
    paths = ExperimentPaths.of(cfg)
    test = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download)
    specs = attack_specs(cfg.evaluation.attacks, cfg.evaluation.eps, cfg.evaluation.steps, cfg.evaluation.step_size)
    models = {role: load_classifier(model_checkpoint(paths, role)) for role in cfg.evaluation.models}
    for m in models.values():
        for p in m.parameters():
            p.requires_grad_(False)
    rows: list[dict[str, Any]] = []
    n_test = len(test)
    base_limit = min(cfg.evaluation.limit or n_test, n_test)
    x_all, y_all = test.images[:base_limit], test.labels[:base_limit]

    def row(protocol: str, role: str, values: dict[str, float], extra: dict[str, Any]) -> None:
        rows.append({"protocol": protocol, "model": role, **summarize_row(values), **extra})

    if "paper" in cfg.evaluation.protocols:
        stores = {}
        for slow in (False, True):
            p = paths.paper_test(slow)
            if p.exists():
                stores[slow] = open_store(p, require_complete=True)
        if not stores:
            raise FileNotFoundError(f"paper protocol needs {paths.paper_test()}: run jobs/generate_pool.py first")
        for role, model in models.items():
            values = {"benign": accuracy(model, x_all, y_all, cfg.evaluation.batch_size)}
            for name in specs:
                store = stores.get(_is_slow(name))
                if store is None or name not in store.attack_names:
                    raise FileNotFoundError(f"paper test store lacks attack {name}; rerun jobs/generate_pool.py with this config")
                rows_ = store.read_rows(0, store.num_rows)
                adv = torch.from_numpy(rows_[f"adv/{name}"]).float().div_(255.0)
                values[name] = score_fixed_adversarial(model, adv, torch.from_numpy(rows_["label"]), cfg.evaluation.batch_size)
            row("paper", role, values, {"source": cfg.pool.source})

    if "whitebox" in cfg.evaluation.protocols:
        for role, model in models.items():
            values = {"benign": accuracy(model, x_all, y_all, cfg.evaluation.batch_size)}
            bounded: dict[str, torch.Tensor] = {}
            for i, (name, spec) in enumerate(specs.items()):
                n = _row_limit(cfg, name, n_test)
                t0 = time.perf_counter()
                result, adv = evaluate_attack(spec, model, test.images[:n], test.labels[:n],
                                              batch_size=cfg.evaluation.batch_size, seed=cfg.seed + i)
                values[name] = result.accuracy
                if n == base_limit and spec.kind not in SLOW_KINDS:
                    bounded[name] = adv
                print(f"[evaluate] whitebox {role} {name}: {result.accuracy:.4f} on {n} images ({time.perf_counter() - t0:.1f}s)", flush=True)
            t0 = time.perf_counter()
            print(f"[evaluate] whitebox {role}: sanity checks on {base_limit} images ...", flush=True)
            extra: dict[str, Any] = {"sanity_warnings": whitebox_sanity(cfg, model, x_all, y_all, values, bounded, specs)}
            print(f"[evaluate] whitebox {role}: sanity checks done ({time.perf_counter() - t0:.1f}s)", flush=True)
            if cfg.evaluation.verdict_pgd_restarts:
                ev = cfg.evaluation
                print(f"[evaluate] whitebox {role}: verdict, PGD-{ev.verdict_pgd_steps} x {ev.verdict_pgd_restarts} "
                      f"restarts on {base_limit} images ...", flush=True)
                extra["verdict"] = whitebox_verdict(cfg, model, x_all, y_all, values, bounded)
                print(f"[evaluate] verdict {role}: {extra['verdict']}", flush=True)
            row("whitebox", role, values, extra)

    if "transfer" in cfg.evaluation.protocols:
        substitute = load_classifier(paths.model("substitute"))
        substitute_fingerprint = checkpoint_fingerprint(paths.model("substitute"))
        values_by_role = {role: {"benign": accuracy(m, x_all, y_all, cfg.evaluation.batch_size)} for role, m in models.items()}
        for i, (name, spec) in enumerate(specs.items()):
            n = _row_limit(cfg, name, n_test)
            t0 = time.perf_counter()
            seed, b = cfg.seed + 10_000 + i, cfg.evaluation.batch_size
            identity = transfer_identity(substitute_fingerprint, spec, cfg.data.dataset, n, seed, b)
            adv = load_transfer_set(paths.transfer_test, name, identity)
            how = "loaded"
            if adv is None:  # generate against the substitute and keep them for the next evaluation
                gen = torch.Generator().manual_seed(seed)
                x_n, y_n = test.images[:n], test.labels[:n]
                adv = torch.cat([run_attack(spec, substitute, x_n[j:j + b], y_n[j:j + b], generator=gen).adversarial
                                 for j in range(0, n, b)])
                save_transfer_set(paths.transfer_test, name, identity, adv)
                how = "generated"
            for role, model in models.items():
                values_by_role[role][name] = score_fixed_adversarial(model, adv, test.labels[:n], cfg.evaluation.batch_size)
            scores = ", ".join(f"{role} {values_by_role[role][name]:.4f}" for role in models)
            print(f"[evaluate] transfer {name} ({i + 1}/{len(specs)}) on {n} images ({time.perf_counter() - t0:.1f}s, "
                  f"{how}): {scores}", flush=True)
        for role, values in values_by_role.items():
            row("transfer", role, values, {"source": "substitute"})
    return rows


def whitebox_sanity(cfg: ExperimentConfig, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    values: dict[str, float], bounded: dict[str, torch.Tensor], specs: dict[str, Any],
                    warn: bool = True) -> list[str]:
    """The sanity checks of one white-box row (``mid_core.evaluation.run_sanity_checks``): robust <= clean over the
    columns in ``values``, the eps bound of ``bounded`` (name -> adversarial images of ``images``), gradient masking,
    and "more PGD steps never help" for the row's first untargeted PGD column, if it ran."""
    from mid_core.evaluation import run_sanity_checks

    pgd = [s for name, s in specs.items() if s.kind == "pgd" and not s.targeted and name in values]
    return run_sanity_checks(
        clean_accuracy=values["benign"], robust={k: v for k, v in values.items() if k != "benign"},
        clean_images=images, adversarial=bounded, specs=specs, model=model, images=images, labels=labels,
        masking_eps=cfg.evaluation.eps, more_steps_specs=pgd[:1], seed=cfg.seed, warn=warn)


def whitebox_verdict(cfg: ExperimentConfig, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     values: dict[str, float], bounded: dict[str, torch.Tensor]) -> dict[str, Any]:
    """PGD-``verdict_pgd_steps`` with ``verdict_pgd_restarts`` random restarts against ``model``, then the per-sample
    worst case: an image counts as robust only if no L-inf attack of the row (``bounded``: name -> adversarial
    images ``(N, C, H, W)`` for all of ``images``, AutoAttack included) nor the restarted PGD fooled the model."""
    from mid_core.attacks import default_spec
    from mid_core.evaluation import evaluate_attack, predict

    ev = cfg.evaluation
    spec = default_spec("PGD_N", eps=ev.eps, steps=ev.verdict_pgd_steps, step_size=ev.verdict_pgd_step_size,
                        rand_init=True, restarts=ev.verdict_pgd_restarts)
    t0 = time.perf_counter()
    result, adv = evaluate_attack(spec, model, images, labels, batch_size=ev.batch_size, seed=cfg.seed + 77_777)
    robust = predict(model, images, ev.batch_size) == labels
    for name, x_adv in {**bounded, "pgd_restarts": adv}.items():
        robust &= predict(model, x_adv, ev.batch_size) == labels
    verdict = {"clean": values["benign"], "autoattack": values.get("AA_N"), "pgd_restarts": result.accuracy,
               "pgd_steps": ev.verdict_pgd_steps, "pgd_step_size": ev.verdict_pgd_step_size,
               "restarts": ev.verdict_pgd_restarts, "per_sample_worst_case": float(robust.float().mean()),
               "worst_case_over": sorted([*bounded, f"PGD-{ev.verdict_pgd_steps}x{ev.verdict_pgd_restarts}"]),
               "images": int(labels.shape[0])}
    if ev.verdict_square_queries:
        verdict.update(square_stage(cfg, model, images, labels, robust))
    verdict["seconds"] = time.perf_counter() - t0
    return verdict


def square_stage(cfg: ExperimentConfig, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 robust: torch.Tensor) -> dict[str, Any]:
    """The verdict's black-box stage: Square with ``verdict_square_queries`` queries and ``verdict_square_restarts``
    restarts on the images still ``robust`` (bool ``(N,)``) after every white-box attack; returns the worst case
    with it as a fraction of all images. Needs no gradients, so gradient masking cannot hide points from it."""
    from mid_core.square_probe import square_survivors

    ev = cfg.evaluation
    t0 = time.perf_counter()
    robust = square_survivors(model, images, labels, robust, ev.eps, ev.verdict_square_queries,
                              ev.verdict_square_restarts, seed=cfg.seed + 88_888, batch_size=ev.batch_size)
    return {"square_queries": ev.verdict_square_queries, "square_restarts": ev.verdict_square_restarts,
            "worst_case_with_square": float(robust.float().mean()), "square_seconds": time.perf_counter() - t0}


def column_names(cfg: ExperimentConfig, n_test: int) -> list[str]:
    cols = ["benign", *cfg.evaluation.attacks, "average", "worst_case"]
    return cols


def write_tables(cfg: ExperimentConfig, rows: list[dict[str, Any]], out_dir: Path, n_test: int) -> dict[str, Path]:
    """Markdown + CSV + JSON tables and a heat-map figure of accuracies (in %)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = column_names(cfg, n_test)
    base = min(cfg.evaluation.limit or n_test, n_test)
    slow_n = min(base, cfg.evaluation.slow_attack_limit)
    header = [c + (f" (first {slow_n})" if _is_slow(c) and slow_n < base else "") for c in cols]
    md = [f"# {cfg.name}: robust accuracy (%) on {cfg.data.dataset} test, first {base} images, "
          f"eps={cfg.evaluation.eps} (L-inf), backbone {cfg.model.backbone}, pool source {cfg.pool.source}", "",
          "| protocol | model | " + " | ".join(header) + " |", "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        md.append(f"| {r['protocol']} | {r['model']} | " + " | ".join(f"{100 * r[c]:.2f}" for c in cols) + " |")
    verdicts = [r for r in rows if r.get("verdict")]
    if verdicts:
        v0 = verdicts[0]["verdict"]
        md += ["", f"White-box verdict on {v0['images']} images (accuracy %): AutoAttack, PGD-{v0['pgd_steps']} "
               f"(step {v0['pgd_step_size']}) with {v0['restarts']} random restarts, and the per-sample worst case over "
               "every L-inf attack of the whitebox row"
               + (f", then Square ({v0['square_queries']} queries, {v0['square_restarts']} restart(s)) on what survives it"
                  if "square_queries" in v0 else ""),
               "", "| model | clean | AutoAttack | PGD restarts | per-sample worst case |"
               + (" worst case + Square |" if "square_queries" in v0 else ""),
               "|---|---|---|---|---|" + ("---|" if "square_queries" in v0 else "")]
        for r in verdicts:
            v = r["verdict"]
            aa = f"{100 * v['autoattack']:.2f}" if v["autoattack"] is not None else "n/a"
            with_square = v.get("worst_case_with_square")
            square = (f" {100 * with_square:.2f} |" if with_square is not None else " n/a |") if "square_queries" in v0 else ""
            md.append(f"| {r['model']} | {100 * v['clean']:.2f} | {aa} | {100 * v['pgd_restarts']:.2f} | "
                      f"{100 * v['per_sample_worst_case']:.2f} |{square}")
    warn_rows = [r for r in rows if r.get("sanity_warnings")]
    if warn_rows:
        md += ["", "Sanity-check warnings:"] + [f"- {r['protocol']}/{r['model']}: {w}" for r in warn_rows for w in r["sanity_warnings"]]
    files = {"md": out_dir / "table.md", "csv": out_dir / "table.csv", "json": out_dir / "results.json", "png": out_dir / "heatmap.png"}
    files["md"].write_text("\n".join(md) + "\n")
    with files["csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["protocol", "model", *header])
        for r in rows:
            w.writerow([r["protocol"], r["model"], *(f"{100 * r[c]:.2f}" for c in cols)])
    files["json"].write_text(json.dumps({"config": cfg.to_dict(), "rows": rows, "test_images": base,
                                         "slow_attack_images": slow_n}, indent=2, default=str))
    _heatmap(rows, cols, files["png"], title=f"{cfg.name} ({cfg.data.dataset}, eps={cfg.evaluation.eps})")
    return files


def _heatmap(rows: list[dict[str, Any]], cols: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[100 * r[c] for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.2 + 0.45 * len(rows)))
    im = ax.imshow(data, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r['protocol']} / {r['model']}" for r in rows], fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white" if data[i, j] < 60 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: ExperimentConfig) -> dict[str, Path]:
    """Evaluate, write the tables and log them (and every cell as a metric) to MLflow."""
    import mlflow

    from mid_core.datasets import load_dataset
    from pipeline.tracking import stage_run

    paths = ExperimentPaths.of(cfg)
    with stage_run(cfg, "evaluate", method="evaluation", extra_tags={"protocols": ",".join(cfg.evaluation.protocols)}):
        t0 = time.perf_counter()
        rows = evaluate_models(cfg)
        n_test = len(load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download))
        files = write_tables(cfg, rows, paths.evaluation, n_test)
        for r in rows:
            mlflow.log_metrics({f"{r['protocol']}/{r['model']}/{c}": float(r[c]) for c in column_names(cfg, n_test)})
        mlflow.log_metric("evaluation_seconds", time.perf_counter() - t0)
        for f in files.values():
            mlflow.log_artifact(str(f), artifact_path="evaluation")
        print(files["md"].read_text(), flush=True)
    return files
