"""The whole experiment on the embedded digits data set in one process (``mid run --executor local``, tiny sizes).

One module-scoped run of teacher -> pool -> MID -> evaluation; each test checks one property of it, or of a short
run that reuses its teacher and pool.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.paths import ExperimentPaths

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"
pytestmark = pytest.mark.timeout(900)

CLEAN_ACCURACY_MARGIN = 0.2  # MID's clean accuracy may drop at most this much below the teacher's (tiny run)
ROBUST_GAIN = 0.05  # MID must beat the teacher on the paper protocol's stored attacks by at least this much


def mid(*args: str) -> int:
    """``mid <args>`` in this process, on the single-process executor."""
    return main([*args, "--executor", "local"])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    assert mid("run", "--config", str(TINY), "--set", f"output_dir={out}") == 0
    cfg = load_config(TINY, [f"output_dir={out}"])
    rows = json.loads((out / "evaluation" / "results.json").read_text())["rows"]
    return cfg, ExperimentPaths.of(cfg), {(r["protocol"], r["model"]): r for r in rows}


def _error_line(capsys) -> str:
    """The one line the command printed for the user's error (other libraries may log to stderr too)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def inputs_of(paths: ExperimentPaths, dest: Path) -> Path:
    """A new output dir holding the experiment's base models and stores (not its MID runs)."""
    (dest / "models").mkdir(parents=True)
    for role in ("teacher", "substitute"):
        if paths.model(role).exists():
            shutil.copy(paths.model(role), dest / "models" / f"{role}.pt")
    shutil.copytree(paths.stores, dest / "stores")
    return dest


def test_training_pool_validates_against_the_teacher(experiment):
    from pipeline.stages.common import checkpoint_fingerprint
    from storage_schemas import open_store

    cfg, paths, _ = experiment
    teacher_fp = checkpoint_fingerprint(paths.model("teacher"))
    store = open_store(paths.train_pool, require_complete=True, expected_fingerprint=teacher_fp)
    assert store.attack_names == cfg.pool.attacks and store.attrs["teacher_fingerprint"] == teacher_fp
    assert all(0.0 <= r <= 1.0 for r in store.success_rates().values())


def test_mid_beats_the_teacher_under_the_paper_protocol(experiment):
    _, _, rows = experiment
    assert rows[("paper", "mid")]["mean_attacks"] >= rows[("paper", "teacher")]["mean_attacks"] + ROBUST_GAIN
    assert rows[("paper", "mid")]["benign"] >= rows[("paper", "teacher")]["benign"] - CLEAN_ACCURACY_MARGIN


def test_robust_accuracy_never_exceeds_clean_in_the_whitebox_rows(experiment):
    cfg, _, rows = experiment
    for model in cfg.evaluation.models:
        row = rows[("whitebox", model)]
        assert all(row[a] <= row["benign"] + 1e-9 for a in cfg.evaluation.attacks)
        assert not row["sanity_warnings"]


def test_every_protocol_has_a_row_per_model_with_both_means(experiment):
    cfg, _, rows = experiment
    assert set(rows) == {(p, m) for p in cfg.evaluation.protocols for m in cfg.evaluation.models}
    for row in rows.values():
        attacks = [row[a] for a in cfg.evaluation.attacks]
        assert row["mean_attacks"] == pytest.approx(sum(attacks) / len(attacks))
        assert row["mean_with_benign"] == pytest.approx((sum(attacks) + row["benign"]) / (len(attacks) + 1))


def test_mlflow_holds_the_stage_runs_with_their_artifacts(experiment):
    from mlflow.tracking import MlflowClient

    cfg, _, rows = experiment
    client = MlflowClient(cfg.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment_name()).experiment_id])
    by_model = {r.data.tags["model"]: r for r in runs if "model" in r.data.tags}
    by_stage = {r.data.tags["stage"]: r for r in runs if "model" not in r.data.tags}
    assert set(by_stage) == {"teacher", "pool", "mid", "evaluate"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_stage["mid"].data.tags["parent_run"] == by_stage["pool"].info.run_id
    for stage, artifact in {"teacher": "models/teacher.pt", "mid": "models/mid.pt",
                            "evaluate": "evaluation/table.md"}.items():
        listed = [f.path for f in client.list_artifacts(by_stage[stage].info.run_id, artifact.split("/")[0])]
        assert artifact in listed, (stage, listed)
    assert any(k.startswith("step/") for k in by_stage["mid"].data.metrics), "no per-step metrics logged"
    assert "paper/mid/mean_attacks" in by_stage["evaluate"].data.metrics
    # one run per evaluated model, with the same metric names for each, for MLflow's compare view
    assert set(by_model) == set(cfg.evaluation.models)
    assert {m: r.data.tags["method"] for m, r in by_model.items()} == {"teacher": "none", "mid": "mid"}
    assert by_model["teacher"].data.metrics.keys() == by_model["mid"].data.metrics.keys()
    for model, run in by_model.items():
        assert run.info.run_name == f"{cfg.name}/evaluate:{model}"
        assert run.data.tags["parent_run"] == by_stage["evaluate"].info.run_id
        assert run.data.tags["protocol"] == ",".join(cfg.evaluation.protocols)
        assert run.data.metrics["robust_acc/paper/PGD_N"] == pytest.approx(rows[("paper", model)]["PGD_N"])
        assert run.data.metrics["clean_acc"] == pytest.approx(rows[("paper", model)]["benign"])


def test_the_deployed_checkpoint_loads_as_a_robust_model_with_its_measured_accuracy(experiment):
    from mid_core import load_robust_model
    from mid_core.datasets import load_dataset

    _, paths, rows = experiment
    model = load_robust_model(paths.model("mid"))
    test = load_dataset("digits", "test").subset(200)
    x = test.images.clone().requires_grad_(True)
    logits = model(x)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # white-box attacks see the whole model
    assert float((logits.argmax(1) == test.labels).float().mean()) == pytest.approx(rows[("paper", "mid")]["benign"])


def test_rerunning_the_experiment_redoes_nothing(experiment):
    cfg, paths, _ = experiment
    files = [paths.model("teacher"), paths.model("mid"), Path(paths.train_pool) / "zarr.json"]
    before = [f.stat().st_mtime_ns for f in files]
    from pipeline.executors import get_executor
    from pipeline.stages import mid as mid_stage, pool, teacher

    executor = get_executor("local")
    teacher.run(cfg, executor)
    pool.run(cfg, executor)
    mid_stage.run(cfg, executor)
    assert [f.stat().st_mtime_ns for f in files] == before


def test_a_killed_training_run_resumes_to_the_weights_of_an_uninterrupted_one(experiment, tmp_path):
    """The process dies in its second epoch; rerunning the same command resumes from the first epoch's state."""
    _, paths, _ = experiment
    out = inputs_of(paths, tmp_path / "run")
    marker = tmp_path / "killed"
    command = [sys.executable, "-m", "pipeline.cli", "train", "--config", str(TINY), "--executor", "local",
               "--set", f"output_dir={out}", "--set", "mid.epochs=2", "--set", "mid.variant=short"]
    env = {**os.environ, "MID_FAULT_KILL_AT_STEP": "30", "MID_FAULT_MARKER": str(marker)}  # 22 steps per epoch
    assert subprocess.run(command, env=env, capture_output=True).returncode != 0 and marker.exists()
    assert not (out / "models" / "short.pt").exists()
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert mid("train", "--config", str(TINY), "--set", f"output_dir={out}", "--set", "mid.epochs=2",
               "--set", "mid.variant=reference") == 0
    assert_same_weights(out / "models" / "short.pt", out / "models" / "reference.pt")


def test_continuing_a_variant_equals_one_longer_run(experiment, tmp_path):
    _, paths, _ = experiment
    out = inputs_of(paths, tmp_path / "run")
    common = ["--config", str(TINY), "--set", f"output_dir={out}"]
    assert mid("train", *common, "--set", "mid.epochs=1", "--set", "mid.variant=one") == 0
    assert mid("train", *common, "--set", "mid.epochs=2", "--set", "mid.variant=more",
               "--set", "mid.continue_from=one") == 0
    assert mid("train", *common, "--set", "mid.epochs=2", "--set", "mid.variant=two") == 0
    assert_same_weights(out / "models" / "more.pt", out / "models" / "two.pt")


def test_force_retrains_from_scratch_so_no_stale_epoch_is_continued(experiment, tmp_path):
    """After ``--force`` with fewer epochs, the variant's states are those of the new run only: continuing it picks
    its own last epoch, not an epoch left over from the run it replaced."""
    _, paths, _ = experiment
    out = inputs_of(paths, tmp_path / "run")
    common = ["--config", str(TINY), "--set", f"output_dir={out}"]
    assert mid("train", *common, "--set", "mid.epochs=3", "--set", "mid.variant=a") == 0
    assert mid("train", *common, "--set", "mid.epochs=1", "--set", "mid.variant=a", "--force") == 0
    assert mid("train", *common, "--set", "mid.epochs=2", "--set", "mid.variant=b", "--set", "mid.continue_from=a") == 0
    assert mid("train", *common, "--set", "mid.epochs=2", "--set", "mid.variant=c") == 0
    assert_same_weights(out / "models" / "b.pt", out / "models" / "c.pt")


def test_pool_refresh_regenerates_against_the_deployed_model(experiment, tmp_path):
    from mid_core.checkpoint import read_checkpoint
    from pipeline.stages.common import checkpoint_fingerprint
    from storage_schemas import open_store

    _, paths, _ = experiment
    out = inputs_of(paths, tmp_path / "run")
    assert mid("train", "--config", str(TINY), "--set", f"output_dir={out}", "--set", "mid.epochs=2",
               "--set", "pool.refresh_every=1", "--set", "mid.variant=refresh") == 0
    run_paths = ExperimentPaths(out)
    refreshed = open_store(run_paths.refreshed_pool(1, "refresh"), require_complete=True)
    assert refreshed.attrs["source_role"] == "deployed" and refreshed.attrs["refresh_epoch"] == 1
    assert refreshed.source_fingerprint == checkpoint_fingerprint(run_paths.training("refresh") / "deployed_epoch1.pt")
    assert refreshed.attrs["teacher_fingerprint"] == checkpoint_fingerprint(paths.model("teacher"))
    assert read_checkpoint(out / "models" / "refresh.pt")["metrics"]["pool_version"] == 1


def test_online_attacks_train_against_the_live_model_without_a_pool(experiment, tmp_path):
    from mid_core.checkpoint import read_checkpoint

    _, paths, _ = experiment
    out = tmp_path / "run"
    (out / "models").mkdir(parents=True)
    shutil.copy(paths.model("teacher"), out / "models" / "teacher.pt")
    assert mid("train", "--config", str(TINY), "--set", f"output_dir={out}", "--set", "mid.epochs=1",
               "--set", "mid.online_attacks=true", "--set", "mid.variant=online") == 0
    metrics = read_checkpoint(out / "models" / "online.pt")["metrics"]
    assert metrics["attack_seconds"] > 0 and metrics["steps"] == 22
    assert not (out / "stores").exists()


def test_a_paper_store_attacked_on_another_teacher_is_refused(experiment, tmp_path, capsys):
    """Retraining the teacher leaves test stores attacked on the old one: evaluating must not score them."""
    _, paths, _ = experiment
    out = inputs_of(paths, tmp_path / "run")
    shutil.copy(paths.model("mid"), out / "models" / "mid.pt")
    shutil.copy(paths.model("substitute"), out / "models" / "teacher.pt")  # "retrained" teacher
    assert mid("evaluate", "--config", str(TINY), "--set", f"output_dir={out}",
               "--set", "evaluation.protocols=[paper]") == 2
    err = _error_line(capsys)
    assert "paper_test" in err and "another teacher" in err and "mid pool" in err


def test_benign_and_attack_columns_on_different_images_are_refused(experiment, capsys):
    _, paths, _ = experiment
    assert mid("evaluate", "--config", str(TINY), "--set", f"output_dir={paths.root}",
               "--set", "evaluation.limit=100", "--set", "evaluation.protocols=[paper]") == 2
    err = _error_line(capsys)
    assert "holds 200 test images" in err and "scores 100" in err


def test_training_before_the_teacher_stage_is_one_line_naming_the_stage(tmp_path, capsys):
    assert mid("train", "--config", str(TINY), "--set", f"output_dir={tmp_path}") == 2
    err = _error_line(capsys)
    assert "teacher.pt does not exist" in err and "mid teacher" in err


def test_a_malformed_yaml_config_is_one_line_with_its_position(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmid:\n  epochs: [1, 2\n")
    assert mid("train", "--config", str(bad)) == 2
    err = _error_line(capsys)
    assert "bad.yaml" in err and "Traceback" not in err


def test_debug_shows_the_traceback_instead(tmp_path):
    from pipeline.errors import MissingInputError

    with pytest.raises(MissingInputError):
        mid("train", "--config", str(TINY), "--set", f"output_dir={tmp_path}", "--debug")


def test_baselines_and_ablation_variants_train_and_evaluate_side_by_side(experiment, tmp_path):
    """Madry AT and TRADES (teacher stage) and the ERM variant (MID stage) reuse the teacher and pool, get their own
    checkpoints, MLflow runs and rows; AT and TRADES learn and are more robust white-box than the undefended teacher;
    the per-sample worst case of the verdict is below every single attack."""
    from mlflow.tracking import MlflowClient

    _, paths, _ = experiment
    out = inputs_of(paths, tmp_path / "run")
    shutil.copy(paths.model("mid"), out / "models" / "mid.pt")
    common = ["--config", str(TINY), "--set", f"output_dir={out}",
              "--set", "evaluation.models=[teacher, at, trades, mid]",
              "--set", "evaluation.protocols=[paper, whitebox]", "--set", "evaluation.attacks=[PGD_N]",
              "--set", "evaluation.eps=0.2",  # the budget both tiny robust models were trained at
              "--set", "evaluation.verdict_pgd_restarts=2", "--set", "evaluation.verdict_pgd_steps=5",
              "--set", "evaluation.verdict_pgd_step_size=0.1", "--set", "at.epochs=4", "--set", "at.steps=5",
              # at eps 0.3 this tiny AT collapses to a constant predictor; at 0.2 it learns (~65 % clean)
              "--set", "at.eps=0.2", "--set", "at.step_size=0.05", "--set", "at.lr=0.003", "--set", "at.batch_size=64",
              *[f"--set=trades.{key}={value}" for key, value in
                dict(epochs=4, steps=5, eps=0.2, step_size=0.05, lr=0.003, batch_size=64).items()],
              "--set", "mid.epochs=2"]
    erm = ["--set", "mid.variant=erm", "--set", "mid.use_meta=false", "--set", "mid.use_distillation=false",
           "--set", "mid.use_ac=false", "--set", "mid.use_cc=false"]
    assert mid("teacher", *common) == 0
    assert mid("train", *common, *erm) == 0
    assert mid("evaluate", *common, "--set", "evaluation.models=[teacher, at, trades, mid, erm]") == 0
    rows = {(r["protocol"], r["model"]): r for r in json.loads((out / "evaluation" / "results.json").read_text())["rows"]}
    models = ("teacher", "at", "trades", "mid", "erm")
    assert set(rows) == {(p, m) for p in ("paper", "whitebox") for m in models}
    for robust in ("at", "trades"):
        assert rows[("whitebox", robust)]["benign"] >= 0.5  # a learned model, not a constant one
        assert rows[("whitebox", robust)]["PGD_N"] > rows[("whitebox", "teacher")]["PGD_N"]
    for model in models:
        row, verdict = rows[("whitebox", model)], rows[("whitebox", model)]["verdict"]
        assert verdict["per_sample_worst_case"] <= min(row["PGD_N"], verdict["pgd_restarts"]) + 1e-9
        assert verdict["images"] == 200
    cfg = load_config(TINY, [f"output_dir={out}"])
    client = MlflowClient(cfg.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment_name()).experiment_id])
    erm_runs = [r for r in runs if r.data.tags.get("variant") == "erm"]
    assert len(erm_runs) == 1 and erm_runs[0].info.run_name == "tiny_test/erm"
    assert erm_runs[0].data.tags["method"] == "mid[no-meta,no-dst,no-ac,no-cc]"
    evaluated = {r.data.tags["model"]: r.data.tags["method"] for r in runs if "model" in r.data.tags}
    assert evaluated == {"teacher": "none", "at": "at", "trades": "trades[beta=6]", "mid": "mid",
                         "erm": "mid[no-meta,no-dst,no-ac,no-cc]"}
