"""MLflow tracking: one experiment per data set, one run per stage and one per evaluated model, tagged for
side-by-side comparison.

The driver of each stage owns its run (params, tags, artifacts); training workers log step metrics into that run
by id (``RunLogger``, rank 0 only). The evaluation adds one run per evaluated model (``log_evaluated_models``),
named ``<config>/evaluate:<model>``, tagged ``method`` (``none`` for the undefended teacher / standard models,
``at``, ``mid``, ``mid[no-meta,...]``), ``protocol``, ``dataset``, ``backbone`` and ``pool``, with the same metric
names for every method (``clean_acc``, ``robust_acc/<protocol>/<attack>``): selecting them in the UI's compare view
puts the defenses of one data set side by side. Where MLflow is not installed (a bare machine running the
single-process executor) the same calls go to a run that records nothing, and every output still lands under
``output_dir``.

Failure policy: the tracking store is checked when a stage starts (``check_tracking``); if it cannot be reached
the stage fails at once with a message, before any compute is spent.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.paths import ExperimentPaths

log = logging.getLogger(__name__)


class TrackingUnavailable(UserError):
    """The MLflow tracking store cannot be reached."""


def mlflow_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


_METRIC_KEY_BAD = re.compile(r"[^\w./ -]")
_MAX_KEY = 250  # MLflow's limit on metric names


def metric_key(name: str) -> str:
    """``name`` as a metric name MLflow accepts on every platform: characters other than letters, digits, ``_``,
    ``-``, ``.``, space and ``/`` become ``_``, and empty, ``.`` or ``..`` path parts (which MLflow refuses as
    names that resolve to other names) become ``_``; at most 250 characters."""
    parts = _METRIC_KEY_BAD.sub("_", name).split("/")
    return "/".join("_" if p in ("", ".", "..") else p for p in parts)[:_MAX_KEY]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _use_tracking_uri(uri: str) -> None:
    """Point MLflow's fluent API at ``uri`` without changing ``$MLFLOW_TRACKING_URI`` (MLflow's
    ``set_tracking_uri`` exports it, which would send every later experiment of this process to this store)."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def check_tracking(cfg: ExperimentConfig) -> str:
    """Make sure the experiment exists and the store answers; returns the experiment id."""
    import mlflow

    uri = cfg.tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    _use_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(cfg.experiment_name())
        if exp:
            return exp.experiment_id
        # with the default SQLite store, artifacts live with the experiment too (not in ./mlruns of the caller)
        location = (cfg.out / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:///") else None
        return mlflow.create_experiment(cfg.experiment_name(), artifact_location=location)
    except Exception as exc:  # MLflow raises many types for an unreachable server
        raise TrackingUnavailable(
            f"MLflow tracking store {uri!r} is not reachable ({type(exc).__name__}: {str(exc)[:200]}). Start the server, "
            "or set tracking.uri / $MLFLOW_TRACKING_URI to a reachable one (default: a local SQLite file)."
        ) from None


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds (not after MLflow's minutes of HTTP retries) when the server does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({exc}). Start it (e.g. `mlflow server --host 127.0.0.1 "
            "--port 5000 --workers 1`), or set tracking.uri / $MLFLOW_TRACKING_URI to a reachable one; nothing was run."
        ) from None


def _load_run_ids(cfg: ExperimentConfig) -> dict[str, str]:
    path = ExperimentPaths.of(cfg).run_ids
    return json.loads(path.read_text()) if path.exists() else {}


def _save_run_id(cfg: ExperimentConfig, stage: str, run_id: str) -> None:
    path = ExperimentPaths.of(cfg).run_ids
    ids = _load_run_ids(cfg)
    ids[stage] = run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ids, indent=2))
    os.replace(tmp, path)


PARENT_STAGE = {"pool": "teacher", "mid": "pool", "evaluate": "mid"}


class StageRun:
    """The MLflow run of one stage (``run_id`` None and every call a no-op where MLflow is not installed)."""

    def __init__(self, run_id: str | None, tracking_uri: str | None) -> None:
        self.run_id, self.tracking_uri = run_id, tracking_uri

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run_id is not None and metrics:
            import mlflow

            mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, folder: str) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.set_tag(key, value)


@contextmanager
def stage_run(cfg: ExperimentConfig, stage: str, method: str, extra_tags: Mapping[str, str] | None = None,
              key: str | None = None, log_config: bool = True) -> Iterator[StageRun]:
    """Open the MLflow run of one stage: named ``<config>/<key>`` (key defaults to the stage; a MID variant's
    name for ablations, ``evaluate:<model>`` for an evaluated model), tagged ``stage``, ``method``, ``dataset``,
    ``backbone``, ``pool`` (the pool's source model, which the ``paper`` protocol's test set is attacked on too)
    and ``extra_tags`` (which override the others), with the config as params (``log_config``); its id is
    recorded under ``key``."""
    if not mlflow_available():
        log.info("%s: MLflow is not installed; nothing is tracked (outputs are under %s)", stage, cfg.output_dir)
        yield StageRun(None, None)
        return
    import mlflow

    experiment_id = check_tracking(cfg)
    parent = _load_run_ids(cfg).get(PARENT_STAGE.get(stage, ""), "")
    tags = {
        "stage": stage, "method": method, "dataset": cfg.data.dataset, "backbone": cfg.model.backbone,
        "pool": cfg.pool.source, "config_name": cfg.name, "parent_run": parent,
        "output_dir": str(ExperimentPaths.of(cfg).root),
        **dict(extra_tags or {}),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{cfg.name}/{key or stage}", tags=tags) as run:
        if log_config:
            mlflow.log_params({k: str(v)[:500] for k, v in _flatten(cfg.to_dict()).items()})
        _save_run_id(cfg, key or stage, run.info.run_id)
        yield StageRun(run.info.run_id, cfg.tracking_uri())


class RunLogger:
    """Logs metrics into an existing run by id (inside training workers; rank 0 only; no-op without a run)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool = True) -> None:
        self.enabled = enabled and run_id is not None and tracking_uri is not None
        self.run_id = run_id
        if self.enabled:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id,
                              metrics=[Metric(metric_key(k), float(v), ts, step) for k, v in metrics.items()])


# ------------------------------------------------------------------------------------------------ evaluated models

VERDICT_METRICS = {"pgd_restarts": "verdict_pgd_restarts", "per_sample_worst_case": "verdict_worst_case",
                   "worst_case_with_square": "verdict_worst_case_with_square",
                   "union": "verdict_union"}  # verdict key -> metric under whitebox/


def model_metrics(rows: list[Mapping[str, Any]], columns: list[str]) -> dict[str, dict[str, float]]:
    """The metrics of each evaluated model (model -> name -> accuracy in [0, 1]) from the evaluation's rows (one
    per (protocol, model), ``columns`` as in the table): ``clean_acc`` (the ``benign`` column; every protocol scores
    the same images), ``robust_acc/<protocol>/<column>`` for every other column (the attacks, the two means, the
    worst case), the per-norm worst cases and their union where a row has them (``robust_acc/whitebox/union``,
    ``.../worst_l2``, ...) and, where a white-box verdict ran, ``robust_acc/whitebox/verdict_*``. The names are the
    same for every method, so MLflow's compare view lines the models up metric by metric."""
    from mid_core.evaluation import THREAT_MODEL_KEYS

    out: dict[str, dict[str, float]] = {}
    for row in rows:
        metrics = out.setdefault(row["model"], {})
        metrics.setdefault("clean_acc", float(row["benign"]))
        for column in columns:
            if column != "benign":
                metrics[metric_key(f"robust_acc/{row['protocol']}/{column}")] = float(row[column])
        for key in THREAT_MODEL_KEYS:
            if row.get(key) is not None:
                metrics[metric_key(f"robust_acc/{row['protocol']}/{key}")] = float(row[key])
        for key, name in VERDICT_METRICS.items():
            value = (row.get("verdict") or {}).get(key)
            if value is not None:
                metrics[metric_key(f"robust_acc/{row['protocol']}/{name}")] = float(value)
    return out


def log_evaluated_models(cfg: ExperimentConfig, rows: list[Mapping[str, Any]], columns: list[str],
                         methods: Mapping[str, str], parent_run: str | None = None) -> dict[str, str | None]:
    """One MLflow run per evaluated model, ``<config>/evaluate:<model>``, with ``model_metrics`` and the tags
    ``model``, ``method`` (``methods[model]``, else the model's name), ``protocol`` (the protocols it was scored
    under, comma-separated) and ``parent_run`` (the evaluation's run, which holds the config as params: the same
    for every model, they would only push the metrics down the compare view), besides ``stage_run``'s; returns
    model -> run id (None without MLflow). Runs are top-level, not nested, so the runs page lists them all."""
    protocols: dict[str, list[str]] = {}
    for row in rows:
        protocols.setdefault(row["model"], []).append(row["protocol"])
    run_ids: dict[str, str | None] = {}
    for model, metrics in model_metrics(rows, columns).items():
        tags = {"model": model, "protocol": ",".join(dict.fromkeys(protocols[model])), "parent_run": parent_run or ""}
        with stage_run(cfg, "evaluate", method=methods.get(model, model), extra_tags=tags,
                       key=f"evaluate:{model}", log_config=False) as run_:
            run_.log_metrics(metrics)
        run_ids[model] = run_.run_id
    return run_ids
