"""MLflow tracking: an unreachable server fails the job at once, before any compute."""
from __future__ import annotations

import socket
import time

import pytest

from pipeline.config import config_from_dict
from pipeline.tracking import TrackingUnavailable, check_tracking, stage_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_with_instructions(tmp_path):
    cfg = config_from_dict({"output_dir": str(tmp_path), "tracking": {"uri": f"http://127.0.0.1:{_free_port()}"}})
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="not reachable.*tracking.uri"):
        check_tracking(cfg)
    assert time.monotonic() - start < 10


def test_stage_run_records_tags_and_parent(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = config_from_dict({"name": "t", "output_dir": str(tmp_path)})
    with stage_run(cfg, "pool", method="pool") as pool_run:
        pass
    with stage_run(cfg, "mid", method="mid") as mid_run:
        pass
    run = MlflowClient(cfg.tracking_uri()).get_run(mid_run.run_id)
    assert run.data.tags["parent_run"] == pool_run.run_id
    assert run.data.tags["dataset"] == "digits" and run.data.tags["stage"] == "mid"
    assert run.data.params["mid.epochs"] == str(cfg.mid.epochs)


def test_each_experiment_tracks_into_its_own_store_within_one_process(tmp_path):
    """A stage of a second experiment in the same process (a notebook, the test suite) must not log into the first
    experiment's default store."""
    from mlflow.tracking import MlflowClient

    first = config_from_dict({"name": "a", "output_dir": str(tmp_path / "a")})
    second = config_from_dict({"name": "b", "output_dir": str(tmp_path / "b")})
    with stage_run(first, "pool", method="pool"):
        pass
    with stage_run(second, "pool", method="pool") as run:
        pass
    assert second.tracking_uri() != first.tracking_uri()
    assert MlflowClient(second.tracking_uri()).get_run(run.run_id).info.run_name == "b/pool"


def fake_rows() -> list[dict]:
    """Evaluation rows of two models under two protocols, as ``evaluate_models`` returns them."""
    def row(protocol, model, benign, pgd, **extra):
        return {"protocol": protocol, "model": model, "benign": benign, "PGD_N": pgd, "mean_attacks": pgd,
                "mean_with_benign": (benign + pgd) / 2, "worst_case": pgd, **extra}

    return [row("paper", "teacher", 0.9, 0.1), row("paper", "mid", 0.8, 0.6),
            row("whitebox", "teacher", 0.9, 0.0, verdict={"pgd_restarts": 0.0, "per_sample_worst_case": 0.0}),
            row("whitebox", "mid", 0.8, 0.3, verdict={"pgd_restarts": 0.25, "per_sample_worst_case": 0.2})]


COLUMNS = ["benign", "PGD_N", "mean_attacks", "mean_with_benign", "worst_case"]


def test_metric_keys_are_names_mlflow_accepts(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import metric_key

    names = ["robust_acc/paper/PGD@0.3[x]", "a//b", "../up", "./x/.", "tab\there", "é:ü"]
    cfg = config_from_dict({"name": "k", "output_dir": str(tmp_path)})
    with stage_run(cfg, "evaluate", method="evaluation") as run:
        run.log_metrics({name: float(i) for i, name in enumerate(names)})
    logged = MlflowClient(cfg.tracking_uri()).get_run(run.run_id).data.metrics
    assert logged == {metric_key(name): float(i) for i, name in enumerate(names)}


def test_valid_metric_names_are_kept():
    from pipeline.tracking import metric_key

    for name in ("robust_acc/paper/PGD_N", "step/loss-total", "final/val acc.1"):
        assert metric_key(name) == name


def test_every_model_gets_the_same_metric_names():
    from pipeline.tracking import model_metrics

    metrics = model_metrics(fake_rows(), COLUMNS)
    assert set(metrics) == {"teacher", "mid"}
    assert metrics["teacher"].keys() == metrics["mid"].keys()
    assert metrics["mid"]["clean_acc"] == 0.8
    assert metrics["mid"]["robust_acc/paper/PGD_N"] == 0.6 and metrics["mid"]["robust_acc/whitebox/PGD_N"] == 0.3
    assert metrics["mid"]["robust_acc/whitebox/verdict_worst_case"] == 0.2
    assert not any(k.startswith("robust_acc/paper/verdict") for k in metrics["mid"])


def test_each_evaluated_model_has_a_tagged_run_and_nothing_lands_in_the_working_directory(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import log_evaluated_models

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config_from_dict({"name": "cmp", "output_dir": str(tmp_path / "out")})
    table = tmp_path / "table.md"
    table.write_text("| model |\n")
    with stage_run(cfg, "evaluate", method="evaluation") as parent:
        parent.log_artifact(table, "evaluation")
    ids = log_evaluated_models(cfg, fake_rows(), COLUMNS, {"teacher": "none", "mid": "mid"}, parent.run_id)
    client = MlflowClient(cfg.tracking_uri())
    runs = {m: client.get_run(run_id) for m, run_id in ids.items()}
    assert {m: r.info.run_name for m, r in runs.items()} == {"teacher": "cmp/evaluate:teacher",
                                                             "mid": "cmp/evaluate:mid"}
    tags = runs["teacher"].data.tags
    assert (tags["method"], tags["model"], tags["protocol"]) == ("none", "teacher", "paper,whitebox")
    assert tags["parent_run"] == parent.run_id
    assert (tags["dataset"], tags["backbone"], tags["pool"]) == (cfg.data.dataset, cfg.model.backbone, cfg.pool.source)
    assert runs["mid"].data.metrics["robust_acc/paper/PGD_N"] == 0.6
    assert runs["mid"].data.tags["method"] == "mid"
    assert list(cwd.iterdir()) == [], "MLflow wrote into the working directory"
    assert list((tmp_path / "out" / "mlartifacts").rglob("table.md")), "the artifact is not under output_dir"
