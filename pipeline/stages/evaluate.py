"""Stage 4: robust accuracy per attack under the three protocols, side by side, each row labelled.

* ``paper``: the model scored on the fixed test store attacked on the pool's source model (a transfer setting:
  how the paper's Table 2 was made);
* ``whitebox``: every attack computed against the evaluated model itself, end to end (AutoAttack included), with
  sanity checks in the spirit of AutoAttack's ``checks.py``, the per-sample worst case of each norm and their
  union over the row's budgeted columns (L-inf, L2, L1; ``threat_model_summary``), and an optional verdict (PGD
  with restarts, the per-sample worst case, a longer Square);
* ``transfer``: the model scored on the fixed test store attacked on the independently trained substitute (paper
  Table 3).

Rows are (protocol, model); columns are ``benign``, the configured attacks, ``mean_attacks``, ``mean_with_benign``
and ``worst_case`` (``mid_core.evaluation.summarize_row``). Every column of a row is computed on the same images:
the first ``evaluation.limit`` test images, CW and JSMA on the first ``evaluation.slow_attack_limit`` of them (the
header says so). A fixed test store is used only if it was attacked on the model in use now and holds exactly the
rows the config asks for. Evaluation runs in the calling process (it needs no workers), so both executors give the
same table. Writes ``table.md``, ``table.csv``, ``results.json`` and ``heatmap.png`` under
``<output_dir>/evaluation`` and logs them to MLflow, with one run per evaluated model (``clean_acc``,
``robust_acc/<protocol>/<attack>``, and ``robust_acc/whitebox/{worst_linf,worst_l2,worst_l1,union}``) for
side-by-side comparison.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ExperimentConfig
from pipeline.errors import MissingInputError, StaleInputError
from pipeline.executors.base import auto_threads
from pipeline.paths import ExperimentPaths
from pipeline.stages.common import checkpoint_fingerprint, pool_source_role, require_model
from pipeline.stages.pool import TEST_SOURCES, attack_specs, is_slow, test_store_limits
from pipeline.stages.tables import column_names, write_tables

log = logging.getLogger(__name__)


def open_test_store(cfg: ExperimentConfig, protocol: str, slow: bool, rows: int) -> Any:
    """The complete fixed test store of ``protocol`` (CW/JSMA's with ``slow``), checked to be attacked on the model
    in use now (its source and the teacher, by sha256 fingerprint) and to hold exactly ``rows`` images."""
    from storage_schemas import StoreError, open_store

    path = ExperimentPaths.of(cfg).test_store(protocol, slow)
    role = TEST_SOURCES[protocol] or pool_source_role(cfg)
    try:
        store = open_store(path, require_complete=True)
    except StoreError as exc:
        raise MissingInputError(f"the {protocol} protocol needs {path}: run mid pool (jobs/generate_pool.py) with this "
                                f"config first ({str(exc).splitlines()[0]})") from None
    for what, want in ((role, checkpoint_fingerprint(require_model(cfg, role))),
                       ("teacher", checkpoint_fingerprint(require_model(cfg, "teacher")))):
        have = store.source_fingerprint if what == role else store.attrs.get("teacher_fingerprint")
        if have != want:
            raise StaleInputError(f"{path} was attacked on another {what} ({str(have)[:12]}) than the one in use "
                                  f"({want[:12]}): its scores would be stale. Delete it and rerun mid pool")
    if store.num_rows != rows:
        raise StaleInputError(f"{path} holds {store.num_rows} test images but this config scores {rows} "
                              "(evaluation.limit / evaluation.slow_attack_limit): benign and attack columns would "
                              "be computed on different images. Delete it and rerun mid pool, or restore the limits")
    return store


def fixed_rows(cfg: ExperimentConfig, protocol: str, models: dict[str, torch.nn.Module], x: torch.Tensor,
               y: torch.Tensor, slow_n: int) -> list[dict[str, Any]]:
    """``paper`` / ``transfer`` rows: every model scored on the same stored adversarial images."""
    from mid_core.evaluation import accuracy, summarize_row

    stores = {}
    for slow in (False, True):
        if any(is_slow(a) == slow for a in cfg.evaluation.attacks):
            stores[slow] = open_test_store(cfg, protocol, slow, slow_n if slow else x.shape[0])
    columns = {}
    for name in cfg.evaluation.attacks:
        store = stores[is_slow(name)]
        if name not in store.attack_names:
            raise StaleInputError(f"{store.path} lacks attack {name}: delete it and rerun mid pool with this config")
        rows = store.read_rows(0, store.num_rows, attacks=[name])
        columns[name] = (torch.from_numpy(rows[f"adv/{name}"]), torch.from_numpy(rows["label"]))
    b = cfg.evaluation.batch_size
    out = []
    for role, model in models.items():
        values = {"benign": accuracy(model, x, y, b)}
        for name, (adv, labels) in columns.items():
            values[name] = accuracy(model, adv, labels, b)
        source = TEST_SOURCES[protocol] or cfg.pool.source
        out.append({"protocol": protocol, "model": role, **summarize_row(values), "source": source})
    log.info("%s rows: %s", protocol, ", ".join(f"{r['model']} {100 * r['mean_attacks']:.2f}" for r in out))
    return out


def whitebox_rows(cfg: ExperimentConfig, models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
                  slow_n: int) -> list[dict[str, Any]]:
    """One ``whitebox`` row per model: every attack run on the model itself, then the sanity checks, the per-norm
    worst cases and their union (``threat_model_summary``), and the verdict."""
    from mid_core.evaluation import accuracy, budgeted_outcomes, evaluate_attack, predict, summarize_row, \
        threat_model_summary

    ev = cfg.evaluation
    specs = attack_specs(ev.attacks, ev.eps, ev.steps, ev.step_size, norm_eps={"l2": ev.eps_l2, "l1": ev.eps_l1})
    out = []
    for role, model in models.items():
        values = {"benign": accuracy(model, x, y, ev.batch_size)}
        bounded: dict[str, torch.Tensor] = {}
        for i, (name, spec) in enumerate(specs.items()):
            n = slow_n if is_slow(name) else x.shape[0]
            t0 = time.perf_counter()
            result, adv = evaluate_attack(spec, model, x[:n], y[:n], batch_size=ev.batch_size, seed=cfg.seed + i)
            values[name] = result.accuracy
            if n == x.shape[0] and spec.budget_eps is not None:
                bounded[name] = adv
            log.info("whitebox %s %s: %.4f on %d images (%.1fs)", role, name, result.accuracy, n,
                     time.perf_counter() - t0)
        log.info("whitebox %s: sanity checks on %d images ...", role, x.shape[0])
        extra: dict[str, Any] = {"sanity_warnings": whitebox_sanity(cfg, model, x, y, values, bounded, specs)}
        outcomes = budgeted_outcomes(model, y, bounded, specs, ev.batch_size)
        clean_ok = predict(model, x, ev.batch_size) == y
        extra.update(threat_model_summary(clean_ok, outcomes, {k: specs[k].norm for k in outcomes}))
        if ev.verdict_pgd_restarts:
            log.info("whitebox %s: verdict, PGD-%d x %d restarts on %d images ...", role, ev.verdict_pgd_steps,
                     ev.verdict_pgd_restarts, x.shape[0])
            extra["verdict"] = whitebox_verdict(cfg, model, x, y, values,
                                                {k: v for k, v in bounded.items() if specs[k].norm == "linf"},
                                                {k: v for k, v in outcomes.items() if specs[k].norm != "linf"})
            log.info("verdict %s: %s", role, extra["verdict"])
        out.append({"protocol": "whitebox", "model": role, **summarize_row(values), **extra})
    return out


def evaluate_models(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Every (protocol, model) row of the config, in protocol order."""
    from mid_core.checkpoint import load_classifier
    from mid_core.datasets import load_dataset

    torch.set_num_threads(auto_threads(0, 1))
    test = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download)
    base, slow_n = test_store_limits(cfg, len(test))
    x, y = test.images[:base], test.labels[:base]
    models = {role: load_classifier(require_model(cfg, role)) for role in cfg.evaluation.models}
    for model in models.values():
        for p in model.parameters():
            p.requires_grad_(False)
    rows: list[dict[str, Any]] = []
    for protocol in ("paper", "whitebox", "transfer"):
        if protocol not in cfg.evaluation.protocols:
            continue
        if protocol == "whitebox":
            rows += whitebox_rows(cfg, models, x, y, slow_n)
        else:
            rows += fixed_rows(cfg, protocol, models, x, y, slow_n)
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
                     values: dict[str, float], bounded: dict[str, torch.Tensor],
                     other_norms: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """PGD-``verdict_pgd_steps`` with ``verdict_pgd_restarts`` random restarts against ``model``, then the per-sample
    worst case: an image counts as robust only if no L-inf attack of the row (``bounded``: name -> adversarial
    images ``(N, C, H, W)`` for all of ``images``, AutoAttack included) nor the restarted PGD fooled the model.
    ``union`` is that worst case AND survival of the row's budgeted attacks in other norms (``other_norms``: name ->
    bool ``(N,)``, the model right on that attack's images), so it is never above ``per_sample_worst_case``."""
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
    union = robust.clone()
    for correct in (other_norms or {}).values():
        union &= correct.to(union.device)
    verdict["union"] = float(union.float().mean())
    verdict["union_over"] = sorted([*verdict["worst_case_over"], *(other_norms or {})])
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


UNDEFENDED = frozenset({"teacher", "standard", "substitute"})  # base models trained without any defense


def model_method(cfg: ExperimentConfig, model: str) -> str:
    """The defense behind an evaluated model, as MLflow's ``method`` tag: ``none`` (teacher, standard, substitute),
    ``at``, ``trades[beta=<beta>]``, or a MID variant's ``method_name`` read from the config saved in its checkpoint (``mid`` when that
    config is absent or no longer valid)."""
    from mid_core.checkpoint import read_checkpoint
    from pipeline.config import ConfigError, config_from_dict
    from pipeline.stages.mid import method_name

    if model in UNDEFENDED:
        return "none"
    if model == "at":
        return "at"
    if model == "trades":
        return f"trades[beta={cfg.trades.beta:g}]"
    saved = read_checkpoint(require_model(cfg, model)).get("config")
    try:
        return method_name(config_from_dict(saved, check_data=False)) if saved else "mid"
    except ConfigError:
        return "mid"


def run(cfg: ExperimentConfig) -> dict[str, Path]:
    """Evaluate, write the tables and log them (and every cell as a metric) to MLflow: the evaluation's run holds
    the tables, the heat map and every cell; each evaluated model gets a run of its own (``log_evaluated_models``)
    for the UI's compare view."""
    from mid_core.datasets import load_dataset
    from pipeline.tracking import log_evaluated_models, stage_run

    paths = ExperimentPaths.of(cfg)
    protocols = ",".join(cfg.evaluation.protocols)
    with stage_run(cfg, "evaluate", method="evaluation",
                   extra_tags={"protocols": protocols, "protocol": protocols}) as run_:
        t0 = time.perf_counter()
        rows = evaluate_models(cfg)
        n_test = len(load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download))
        files = write_tables(cfg, rows, paths.evaluation, n_test)
        for r in rows:
            run_.log_metrics({f"{r['protocol']}/{r['model']}/{c}": float(r[c]) for c in column_names(cfg)})
        run_.log_metrics({"evaluation_seconds": time.perf_counter() - t0})
        for f in files.values():
            run_.log_artifact(f, "evaluation")
        log.info("robustness table (%s):\n%s", files["md"], files["md"].read_text())
    if run_.run_id is not None:
        log_evaluated_models(cfg, rows, column_names(cfg), {m: model_method(cfg, m) for m in cfg.evaluation.models},
                             parent_run=run_.run_id)
    return files
