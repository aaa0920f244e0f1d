"""MLflow tracking: one experiment per data set, one run per stage, tagged for side-by-side comparison.

The driver of each stage owns its run (params, tags, artifacts); training workers log step metrics into that run
by id (``RunLogger``, rank 0 only). Where MLflow is not installed (a bare machine running the single-process
executor) the same calls go to a run that records nothing, and every output still lands under ``output_dir``.

Failure policy: the tracking store is checked when a stage starts (``check_tracking``); if it cannot be reached
the stage fails at once with a message, before any compute is spent.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
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

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

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
              key: str | None = None) -> Iterator[StageRun]:
    """Open the MLflow run of one stage: named ``<config>/<key>`` (key defaults to the stage; a MID variant's
    name for ablations), tagged, with the config as params; its id is recorded under ``key``."""
    if not mlflow_available():
        log.info("%s: MLflow is not installed; nothing is tracked (outputs are under %s)", stage, cfg.output_dir)
        yield StageRun(None, None)
        return
    import mlflow

    experiment_id = check_tracking(cfg)
    parent = _load_run_ids(cfg).get(PARENT_STAGE.get(stage, ""), "")
    tags = {
        "stage": stage, "method": method, "dataset": cfg.data.dataset, "backbone": cfg.model.backbone,
        "config_name": cfg.name, "parent_run": parent, "output_dir": str(ExperimentPaths.of(cfg).root),
        **dict(extra_tags or {}),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{cfg.name}/{key or stage}", tags=tags) as run:
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
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
