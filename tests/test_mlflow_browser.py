"""The MLflow UI shows evaluated models side by side: runs logged by the project's tracking code, served by a real
MLflow server, rendered in headless Chromium (skipped where Chromium is not installed)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("mlflow")
pytestmark = pytest.mark.timeout(300)


def _browser():
    spec = importlib.util.spec_from_file_location("mlflow_screenshot", REPO / "scripts" / "mlflow_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


browser = _browser()
if browser.chromium() is None:
    pytest.skip("chromium is not installed, so the MLflow UI cannot be rendered: run `bash scripts/setup_browser.sh` "
                "(Debian: apt-get install chromium)", allow_module_level=True)

COLUMNS = ["benign", "PGD_N", "mean_attacks", "mean_with_benign", "worst_case"]


def _row(model: str, benign: float, pgd: float) -> dict:
    return {"protocol": "paper", "model": model, "benign": benign, "PGD_N": pgd, "mean_attacks": pgd,
            "mean_with_benign": (benign + pgd) / 2, "worst_case": pgd}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two evaluated models of a tiny fake result, logged with ``log_evaluated_models``, and a server over them:
    (base URL, experiment id, {model: run id}, folder for screenshots)."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import log_evaluated_models

    root = tmp_path_factory.mktemp("mlflow_browser")
    cfg = config_from_dict({"name": "ui", "output_dir": str(root / "out")})
    ids = log_evaluated_models(cfg, [_row("teacher", 0.9, 0.125), _row("mid", 0.875, 0.625)], COLUMNS,
                               {"teacher": "none", "mid": "mid"})
    experiment_id = MlflowClient(cfg.tracking_uri()).get_experiment_by_name(cfg.experiment_name()).experiment_id
    with browser.serve(cfg.tracking_uri(), root) as base:
        yield base, experiment_id, ids, root


def test_the_runs_page_lists_both_evaluated_models(served):
    base, experiment_id, _, root = served
    shot = root / "runs_page.png"
    dom = browser.render(browser.runs_url(base, experiment_id), shot)
    print(f"screenshot: {shot}")
    assert "ui/evaluate:teacher" in dom and "ui/evaluate:mid" in dom, f"run names not rendered; see {shot}"


def test_the_compare_page_shows_both_models_and_their_robust_accuracy(served):
    base, experiment_id, ids, root = served
    shot = root / "compare_page.png"
    dom = browser.render(browser.compare_url(base, experiment_id, [ids["teacher"], ids["mid"]]), shot)
    print(f"screenshot: {shot}")
    assert "ui/evaluate:teacher" in dom and "ui/evaluate:mid" in dom, f"run names not rendered; see {shot}"
    assert "robust_acc/paper/PGD_N" in dom, f"metric not rendered; see {shot}"
    assert ">0.625<" in dom and ">0.125<" in dom, f"metric values not rendered; see {shot}"
