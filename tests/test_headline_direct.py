"""scripts/headline_direct.py: the whole experiment without Ray, Zarr or MLflow (the lent GPU machine has none)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mid_core import load_robust_model
from mid_core.datasets import load_dataset
from mid_core.evaluation import accuracy

REPO = Path(__file__).resolve().parents[1]

# Runs the script with ray, zarr and mlflow made unimportable, as on a machine where they are not installed.
_WITHOUT_PIPELINE_STACK = (
    "import runpy, sys\n"
    "for m in ('ray', 'zarr', 'mlflow'):\n"
    "    sys.modules[m] = None\n"
    "sys.argv = ['headline_direct.py'] + sys.argv[1:]\n"
    "runpy.run_path(%r, run_name='__main__')\n" % str(REPO / "scripts" / "headline_direct.py")
)


def _tiny_experiment(root: Path) -> Path:
    """A digits config and its mid_refresh variant file, laid out as configs/<name>.yaml + configs/<name>/."""
    (root / "tiny").mkdir()
    (root / "tiny.yaml").write_text(
        "name: tiny\nseed: 0\noutput_dir: unused\ndata:\n  dataset: digits\nmodel:\n  backbone: lenet_tiny\n"
        "teacher:\n  epochs: 2\n  batch_size: 64\n  lr: 0.003\n"
        "at:\n  epochs: 1\n  batch_size: 128\n  steps: 5\n  step_size: 0.08\n"
        "pool:\n  attacks: [PGD_N, MIM_T]\n  steps: 5\n  step_size: 0.08\n  batch_size: 512\n"
        "mid:\n  epochs: 2\n  batch_size: 128\n  lr: 0.003\n"
        "evaluation:\n  attacks: [PGD_N, MIM_T, FGSM_N]\n  steps: 5\n  step_size: 0.08\n  limit: 96\n"
        "  batch_size: 512\n  verdict_pgd_restarts: 2\n  verdict_pgd_steps: 5\n")
    (root / "tiny" / "mid_refresh.yaml").write_text(
        "base: ../tiny.yaml\npool:\n  refresh_every: 1\nmid:\n  variant: mid_refresh\n")
    (root / "tiny" / "erm.yaml").write_text(
        "base: ../tiny.yaml\nmid:\n  variant: erm\n  use_meta: false\n  use_distillation: false\n"
        "  use_ac: false\n  use_cc: false\n")
    (root / "tiny" / "cv.yaml").write_text("base: ../tiny.yaml\npool:\n  attacks: [PGD_N, MIM_T, FGSM_N]\nmid:\n  variant: cv\n  attacks: [PGD_N, FGSM_N]\n")
    return root / "tiny.yaml"


@pytest.fixture(scope="module")
def headline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("headline")
    config, out = _tiny_experiment(root), root / "out"
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_PIPELINE_STACK, "--config", str(config), "--out", str(out),
                           "--budget-s", "600", "--eval-reserve-s", "60", "--bench-repeats", "8", "--device", "cpu",
                           "--variants", "mid", "mid_refresh", "at", "erm", "cv"],
                          capture_output=True, text=True, timeout=900, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def test_runs_without_ray_zarr_or_mlflow_and_writes_every_protocol_row(headline_run):
    _, results, _ = headline_run
    rows = {(r["protocol"], r["model"]) for r in results["rows"]}
    models = ["teacher", "mid", "mid_refresh", "at", "erm", "cv"]
    assert rows == {(p, m) for p in ("paper", "transfer", "whitebox") for m in models}
    assert results["test_images"] == 96 and results["skipped"] == []


def test_whitebox_robust_accuracy_never_exceeds_clean(headline_run):
    _, results, _ = headline_run
    for row in (r for r in results["rows"] if r["protocol"] == "whitebox"):
        for column in ("PGD_N", "MIM_T", "FGSM_N", "AA_N"):
            assert row.get(column, 0.0) <= row["benign"], (row["model"], column)
        assert row["verdict"]["per_sample_worst_case"] <= row["verdict"]["pgd_restarts"] <= row["benign"]


def test_checkpoints_load_and_score_what_the_rows_claim(headline_run):
    out, results, _ = headline_run
    test = load_dataset("digits", "test").subset(96)
    for row in (r for r in results["rows"] if r["protocol"] == "paper"):
        model = load_robust_model(out / f"{row['model']}.pt")
        assert accuracy(model, test.images, test.labels) == pytest.approx(row["benign"], abs=1e-6), row["model"]


def test_refresh_regenerates_the_pool_against_the_student(headline_run):
    _, results, _ = headline_run
    refreshed, static = results["training"]["mid_refresh"], results["training"]["mid"]
    assert [r["epoch"] for r in refreshed["refreshes"]] == [1]  # after epoch 1 of 2; none after the last
    assert set(refreshed["refreshes"][0]["success_rate"]) == {"PGD_N", "MIM_T"}
    assert static["refreshes"] == []
    assert refreshed["epochs_completed"] == static["epochs_completed"] == 2


def test_records_stage_times_and_the_step_benchmark(headline_run):
    _, results, stdout = headline_run
    for stage in ("teacher", "substitute", "pool", "paper_test_set", "transfer_test_set", "mid", "mid_refresh", "at"):
        assert results["stages"][stage]["seconds"] > 0, stage
    steps = results["benchmarks"]["steps"]
    # generating the attacks each step costs more than reading them (tiny model: ~1.8x; 8 timed steps, since the
    # mean of 2 once let slow first stored steps hide the attacks' ~60 ms: 0.99x in a CI run of session 12)
    assert steps["ratio_1b_online_vs_stored"] > 1.0
    assert "done in" in stdout


def test_epoch_budget_rule():
    from pipeline.direct.budget import epoch_fits

    assert epoch_fits(0, 0.0, 0.0)  # the first epoch always runs
    assert epoch_fits(2, 20.0, 30.0)  # 2 epochs took 20 s: a third (10 s) fits in 30 s
    assert not epoch_fits(2, 20.0, 29.0)


def test_unknown_variant_fails_with_the_expected_path(tmp_path):
    config = _tiny_experiment(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "headline_direct.py"), "--config", str(config),
                           "--out", str(tmp_path / "out"), "--variants", "mid_nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "mid_nope" in proc.stderr and "tiny/mid_nope.yaml" in proc.stderr


def test_each_epoch_is_checkpointed_and_scored_on_the_fixed_sets(headline_run):
    _, results, _ = headline_run
    curve = results["training"]["mid"]["curve"]
    assert [p["epoch"] for p in curve] == [1, 2]
    paper_row = next(r for r in results["rows"] if (r["protocol"], r["model"]) == ("paper", "mid"))
    assert curve[-1]["paper"]["average"] == pytest.approx(paper_row["average"])


def _continue(out: Path, teacher: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    config = _tiny_experiment(tmp_path)
    return subprocess.run([sys.executable, str(REPO / "scripts" / "headline_direct.py"), "--config", str(config),
                           "--out", str(tmp_path / "out"), "--variants", "mid", "--teacher", str(teacher),
                           "--init-from", f"mid={out / 'mid.pt'}", "--bench-repeats", "0", "--device", "cpu",
                           "--set", "mid.epochs=3", "--set", "evaluation.protocols=[paper]"],
                          capture_output=True, text=True, timeout=600)


def test_init_from_continues_the_epoch_numbering_of_a_checkpoint(headline_run, tmp_path):
    out, _, _ = headline_run
    proc = _continue(out, out / "teacher.pt", tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads((tmp_path / "out" / "results.json").read_text())["training"]["mid"]
    assert (info["start_epoch"], info["epochs_completed"]) == (2, 3)
    assert [p["epoch"] for p in info["curve"]] == [3] and info["optimizer_state"].startswith("fresh")


def test_init_from_refuses_a_checkpoint_of_another_teacher(headline_run, tmp_path):
    out, _, _ = headline_run
    proc = _continue(out, out / "substitute.pt", tmp_path)
    assert proc.returncode == 2
    assert "another teacher" in proc.stderr


def test_a_variant_trains_on_its_own_attacks_generating_those_the_pool_lacks(headline_run):
    _, results, _ = headline_run
    cv = results["training"]["cv"]
    assert cv["attacks"] == ["PGD_N", "FGSM_N"]
    assert set(cv["held_out_count"]) == {"benign", "PGD_N", "FGSM_N"} and sum(cv["held_out_count"].values()) == cv["steps"]
    assert results["stages"]["pool_extra_cv"]["attacks"] == ["FGSM_N"]
    assert set(results["training"]["mid"]["held_out_count"]) == {"benign", "PGD_N", "MIM_T"}


def test_erm_trains_a_whole_classifier(headline_run):
    out, _, _ = headline_run
    from mid_core.checkpoint import read_checkpoint

    erm, mid = read_checkpoint(out / "erm.pt")["state_dict"], read_checkpoint(out / "mid.pt")["state_dict"]
    teacher = read_checkpoint(out / "teacher.pt")["state_dict"]
    head = [k for k in erm if k.startswith("classifier.")]
    assert head and any(not torch.equal(erm[k], teacher[k]) for k in head)  # ERM trains the head too
    assert all(torch.equal(mid[k], teacher[k]) for k in head)  # MID keeps the teacher's head frozen


def test_at_is_checkpointed_and_scored_after_every_epoch(headline_run):
    from mid_core.checkpoint import read_checkpoint

    out, results, _ = headline_run
    curve = results["training"]["at"]["curve"]
    assert [p["epoch"] for p in curve] == [1]
    assert read_checkpoint(out / "at.pt")["metrics"]["epochs_completed"] == 1
    paper_row = next(r for r in results["rows"] if (r["protocol"], r["model"]) == ("paper", "at"))
    assert curve[-1]["paper"]["average"] == pytest.approx(paper_row["average"])


def _fixed_sets_run(headline_out: Path, tmp_path: Path, sets: Path, name: str, *extra: str,
                    protocols: str = "[paper,transfer]") -> subprocess.CompletedProcess:
    config = tmp_path / "tiny.yaml"
    if not config.exists():
        _tiny_experiment(tmp_path)
    return subprocess.run([sys.executable, str(REPO / "scripts" / "headline_direct.py"), "--config", str(config),
                           "--out", str(tmp_path / name), "--variants", "--teacher", str(headline_out / "teacher.pt"),
                           "--fixed-sets", str(sets), "--bench-repeats", "0", "--device", "cpu",
                           "--set", f"evaluation.protocols={protocols}", *extra],
                          capture_output=True, text=True, timeout=600)


def test_fixed_sets_are_saved_once_and_loaded_by_the_next_runs_with_the_same_rows(headline_run, tmp_path):
    out, _, _ = headline_run
    sets = tmp_path / "sets.pt"
    runs = [_fixed_sets_run(out, tmp_path, sets, "paper_only", protocols="[paper]"),
            _fixed_sets_run(out, tmp_path, sets, "adds_transfer"),  # loads paper, generates transfer
            _fixed_sets_run(out, tmp_path, sets, "loads_both")]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2, r3 = (json.loads((tmp_path / n / "results.json").read_text())
                  for n in ("paper_only", "adds_transfer", "loads_both"))
    assert "fixed_sets_loaded" not in r1["stages"]
    assert r2["stages"]["fixed_sets_loaded"]["protocols"] == ["paper"] and "transfer_test_set" in r2["stages"]
    assert r3["stages"]["fixed_sets_loaded"]["protocols"] == ["paper", "transfer"]
    assert "substitute" not in r3["stages"]  # the transfer set came from the file: no substitute is trained
    rows = [{(r["protocol"], r["model"]): r["average"] for r in res["rows"]} for res in (r1, r2, r3)]
    assert rows[1] == rows[2] and rows[0][("paper", "teacher")] == rows[2][("paper", "teacher")]


def test_fixed_sets_of_other_settings_are_refused_with_what_differs(headline_run, tmp_path):
    out, _, _ = headline_run
    sets = tmp_path / "sets.pt"
    assert _fixed_sets_run(out, tmp_path, sets, "first", protocols="[paper]").returncode == 0
    other = _fixed_sets_run(out, tmp_path, sets, "other", "--set", "evaluation.eps=0.2", protocols="[paper]")
    assert other.returncode == 2
    assert "eps" in other.stderr and "--fixed-sets" in other.stderr


def test_whitebox_rows_only_for_the_models_asked(headline_run, tmp_path):
    out, _, _ = headline_run
    proc = _fixed_sets_run(out, tmp_path, tmp_path / "sets.pt", "wb", "--evaluate", f"mid={out / 'mid.pt'}",
                           "--whitebox-models", "mid", "--set", "evaluation.attacks=[PGD_N]", protocols="[whitebox]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "wb" / "results.json").read_text())["rows"]
    assert [(r["protocol"], r["model"]) for r in rows] == [("whitebox", "mid")]


def test_whitebox_models_must_be_models_of_the_run(headline_run, tmp_path):
    out, _, _ = headline_run
    proc = _fixed_sets_run(out, tmp_path, tmp_path / "sets.pt", "wb", "--whitebox-models", "at", protocols="[paper]")
    assert proc.returncode == 2 and "--whitebox-models ['at']" in proc.stderr
