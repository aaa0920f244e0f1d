"""Log a ``results.json`` made outside the Ray pipeline into the experiment's MLflow store, so the MLflow UI compares
it with the pipeline's runs.

    python -m pipeline.import_results --config configs/mnist_lenet5_gpu.yaml \\
        --results runs/mnist_lenet5_gpu/evaluation/results.json [--name gpu-run-a]

For ``scripts/headline_direct.py`` runs (e.g. on a lent GPU machine where MLflow is not installed): one MLflow run
tagged ``stage=evaluate``, ``method=evaluation``, ``driver``/``device`` from the file, with every table cell as a
metric (``<protocol>/<model>/<column>``), each training stage's per-epoch history (``train/<stage>/<metric>``, step =
epoch) and fixed-set curve, stage wall times (``stage_seconds/<stage>``), and the tables, heat map, source file and
checkpoints next to it (``--models``) as artifacts. Rows missing columns (a white-box row cut short by a time
budget) are left out of the tables and listed in the tag ``partial_rows``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, ExperimentConfig, load_config


def complete_rows(rows: list[dict[str, Any]], columns: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows holding every column, and ``protocol/model`` of the others."""
    full = [r for r in rows if all(isinstance(r.get(c), (int, float)) for c in columns)]
    return full, [f"{r['protocol']}/{r['model']}" for r in rows if r not in full]


def import_results(cfg: ExperimentConfig, results_path: Path, name: str | None = None,
                   models: list[Path] | None = None) -> str:
    """Log ``results_path`` as one MLflow run of ``cfg``'s experiment; returns the run id. Tables are written to
    ``<results dir>/imported/`` (the source file is not touched)."""
    import mlflow

    from pipeline.evaluate import column_names, write_tables
    from pipeline.tracking import stage_run

    results = json.loads(results_path.read_text())
    if "rows" not in results or "test_images" not in results:
        raise ValueError(f"{results_path} is not a results.json of jobs/evaluate.py or scripts/headline_direct.py "
                         "(no 'rows' / 'test_images')")
    columns = column_names(cfg, results["test_images"])
    rows, partial = complete_rows(results["rows"], columns)
    tags = {"driver": str(results.get("driver", "jobs/evaluate.py")), "device": str(results.get("device", "")),
            "imported_from": str(results_path), "partial_rows": ",".join(partial)}
    with stage_run(cfg, "evaluate", method="evaluation", extra_tags=tags, key=name or "evaluate-imported") as run:
        files = write_tables(cfg, rows, results_path.parent / "imported", results["test_images"]) if rows else {}
        for r in rows:
            mlflow.log_metrics({f"{r['protocol']}/{r['model']}/{c}": float(r[c]) for c in columns})
        for stage, info in results.get("stages", {}).items():
            mlflow.log_metric(f"stage_seconds/{stage}", float(info["seconds"]))
        for stage, info in results.get("training", {}).items():
            for epoch, metrics in enumerate(info.get("history", []), start=info.get("start_epoch", 0) + 1):
                mlflow.log_metrics({f"train/{stage}/{k}": float(v) for k, v in metrics.items()
                                    if isinstance(v, (int, float))}, step=int(metrics.get("epoch", epoch)))
            for point in info.get("curve", []):
                for protocol, values in point.items():
                    if isinstance(values, dict):
                        mlflow.log_metrics({f"curve/{stage}/{protocol}/{k}": float(v) for k, v in values.items()},
                                           step=int(point["epoch"]))
        for f in [*files.values(), results_path]:
            mlflow.log_artifact(str(f), artifact_path="evaluation")
        for model in models or []:
            mlflow.log_artifact(str(model), artifact_path="models")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the experiment's config (names the MLflow experiment and store)")
    p.add_argument("--results", required=True, type=Path, help="results.json to import")
    p.add_argument("--name", default=None, help="run name suffix (default: evaluate-imported)")
    p.add_argument("--models", nargs="*", default=[], type=Path, help="checkpoints to attach as artifacts")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        missing = [str(m) for m in [args.results, *args.models] if not m.exists()]
        if missing:
            raise FileNotFoundError(f"not found: {missing}")
        run_id = import_results(cfg, args.results, args.name, args.models)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"logged {args.results} as MLflow run {run_id} ({cfg.tracking_uri()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
