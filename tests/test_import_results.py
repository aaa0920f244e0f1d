"""pipeline.import_results: a results.json made without MLflow (scripts/headline_direct.py) lands in MLflow."""
from __future__ import annotations

import json

import pytest

from pipeline.config import config_from_dict
from pipeline.import_results import import_results

COLUMNS = ["PGD_N", "FGSM_N"]


def _row(protocol: str, model: str, **values: float) -> dict:
    return {"protocol": protocol, "model": model, **values}


@pytest.fixture
def imported(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = config_from_dict({"name": "t", "output_dir": str(tmp_path / "run"),
                            "evaluation": {"attacks": COLUMNS, "protocols": ["paper", "whitebox"]}})
    full = {"benign": 0.9, "PGD_N": 0.5, "FGSM_N": 0.7, "average": 0.7, "worst_case": 0.5}
    results = {"rows": [_row("paper", "mid", **full), _row("whitebox", "mid", benign=0.9, PGD_N=0.1)],
               "test_images": 100, "slow_attack_images": 10, "driver": "scripts/headline_direct.py", "device": "H200",
               "stages": {"teacher": {"seconds": 20.0}},
               "training": {"mid": {"start_epoch": 0, "history": [{"epoch": 1, "loss_total": 3.0}, {"epoch": 2, "loss_total": 2.0}],
                                    "curve": [{"epoch": 2, "paper": {"average": 0.7}}]}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    run_id = import_results(cfg, path, name="gpu-a")
    return MlflowClient(cfg.tracking_uri()), run_id, path


def test_every_cell_of_complete_rows_becomes_a_metric(imported):
    client, run_id, _ = imported
    metrics = client.get_run(run_id).data.metrics
    assert metrics["paper/mid/PGD_N"] == pytest.approx(0.5) and metrics["paper/mid/average"] == pytest.approx(0.7)
    assert not any(k.startswith("whitebox/") for k in metrics)  # the cut-short row is not tabulated


def test_partial_rows_and_origin_are_tagged(imported):
    client, run_id, path = imported
    tags = client.get_run(run_id).data.tags
    assert tags["partial_rows"] == "whitebox/mid"
    assert tags["device"] == "H200" and tags["imported_from"] == str(path) and tags["stage"] == "evaluate"


def test_training_history_is_logged_per_epoch(imported):
    client, run_id, _ = imported
    history = client.get_metric_history(run_id, "train/mid/loss_total")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 3.0), (2, 2.0)]
    assert client.get_metric_history(run_id, "curve/mid/paper/average")[0].step == 2


def test_a_file_without_rows_is_refused(tmp_path):
    cfg = config_from_dict({"name": "t", "output_dir": str(tmp_path / "run")})
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(ValueError, match="not a results.json"):
        import_results(cfg, path)
