"""``mid run``: every stage of one experiment in order, for one config and its variants, skipping finished work."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.executors.base import Executor

log = logging.getLogger(__name__)


def variant_config(config: Path, overrides: list[str], variant: str) -> ExperimentConfig:
    """The config of MID variant ``variant``: ``<config dir>/<name>/<variant>.yaml`` beside the base config."""
    base = load_config(config, overrides)
    path = config.parent / base.name / f"{variant}.yaml"
    if not path.exists():
        raise ConfigError(f"no config for variant {variant!r}: expected {path} (starting with `base: ../{config.name}`)")
    return load_config(path, overrides)


def run_experiment(config: Path, overrides: list[str], variants: list[str], executor: Executor) -> None:
    """Teacher stage, pool, MID, each variant, evaluation (the variants added to the evaluated models), then the
    analysis figures (unless ``analysis.figures`` is empty); each stage's wall time is appended to
    ``<output_dir>/stage_times.tsv``. Every config is validated before any work."""
    from pipeline.stages import analyze, evaluate, mid, pool, teacher

    cfg = load_config(config, overrides)
    variant_cfgs = [variant_config(config, overrides, v) for v in variants]
    extra = [v.mid.variant for v in variant_cfgs if v.mid.variant not in cfg.evaluation.models]
    eval_cfg = load_config(config, [*overrides, f"evaluation.models={list(cfg.evaluation.models) + extra}"]) \
        if extra else cfg
    times = cfg.out / "stage_times.tsv"

    def timed(label: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        log.info("stage %s ...", label)
        fn()
        seconds = time.perf_counter() - t0
        log.info("stage %s done in %.0f s", label, seconds)
        times.parent.mkdir(parents=True, exist_ok=True)
        with times.open("a") as fh:
            fh.write(f"{label}\t{seconds:.1f}\t{executor.name}\t{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")

    timed("teacher", lambda: teacher.run(eval_cfg, executor))
    timed("pool", lambda: pool.run(eval_cfg, executor))
    timed(cfg.mid.variant, lambda: mid.run(cfg, executor))
    for v in variant_cfgs:
        timed(v.mid.variant, lambda v=v: mid.run(v, executor))
    timed("evaluate", lambda: evaluate.run(eval_cfg))
    if cfg.analysis.figures:
        timed("analyze", lambda: analyze.run(eval_cfg))
    log.info("done: robustness table %s (also table.csv, results.json, heatmap.png); MLflow runs in %s",
             cfg.out / "evaluation" / "table.md", cfg.tracking_uri())
