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
