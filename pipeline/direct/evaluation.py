"""Evaluation rows of a direct run: fixed-set (``paper``/``transfer``) rows and budgeted ``whitebox`` rows."""
from __future__ import annotations

import time
from typing import Any

import torch

from mid_core.attacks import AttackSpec
from mid_core.datasets import ImageData
from mid_core.evaluation import accuracy, evaluate_attack, summarize_row
from pipeline.config import ExperimentConfig
from pipeline.direct.attacks import as_float
from pipeline.direct.budget import Clock, log
from pipeline.direct.results import Results
from pipeline.generation import SLOW_KINDS


COLUMN_MIN_LEFT_S = {"AA_N": 60.0, "verdict": 20.0}  # start a white-box column only with this much budget left
DEFAULT_MIN_LEFT_S = 10.0


def whitebox_row(cfg: ExperimentConfig, name: str, model: torch.nn.Module, test: ImageData,
                 specs: dict[str, AttackSpec], clock: Clock, results: Results) -> dict[str, Any]:
    """White-box row of one model: AutoAttack first, the PGD-restarts verdict, then the other columns, each started
    only while enough budget is left (``COLUMN_MIN_LEFT_S``). The row is in ``results`` from the start and rewritten
    after every column, so a run stopped at its limit keeps what finished; it lists the columns it skipped."""
    from pipeline.evaluate import whitebox_sanity, whitebox_verdict

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
    row["sanity_warnings"] = whitebox_sanity(cfg, model, x, y, values, bounded, specs, warn=False)
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
