"""All four stages on the embedded digits data set through a local Ray cluster (tiny sizes).

One module-scoped run of teacher -> pool -> MID -> evaluation; each test checks one property of it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.paths import ExperimentPaths

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(1500)]

CLEAN_ACCURACY_MARGIN = 0.15  # MID's clean accuracy may drop at most this much below the teacher's (tiny run)
ROBUST_GAIN = 0.05  # MID must beat the teacher on stored PGD_N test attacks by at least this much


@pytest.fixture(scope="module")
def pipeline_run(ray_cluster, tmp_path_factory):
    from pipeline import evaluate, generation, train_mid, train_teacher

    out = tmp_path_factory.mktemp("e2e")
    cfg = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={out}"])
    train_teacher.run(cfg)
    generation.run(cfg)
    train_mid.run(cfg)
    files = evaluate.run(cfg)
    rows = json.loads(files["json"].read_text())["rows"]
    return cfg, ExperimentPaths.of(cfg), {(r["protocol"], r["model"]): r for r in rows}


def test_training_pool_validates_against_the_teacher(pipeline_run):
    from pipeline.generation import checkpoint_fingerprint
    from storage_schemas import open_store

    cfg, paths, _ = pipeline_run
    store = open_store(paths.train_pool, require_complete=True, expected_fingerprint=checkpoint_fingerprint(paths.model("teacher")))
    store.validate()
    assert store.attack_names == cfg.pool.attacks
    assert all(0.0 <= r <= 1.0 for r in store.success_rates().values())


def test_mid_beats_teacher_on_stored_pgd_attacks(pipeline_run):
    _, _, rows = pipeline_run
    assert rows[("paper", "mid")]["PGD_N"] >= rows[("paper", "teacher")]["PGD_N"] + ROBUST_GAIN


def test_mid_clean_accuracy_within_margin(pipeline_run):
    _, _, rows = pipeline_run
    assert rows[("paper", "mid")]["benign"] >= rows[("paper", "teacher")]["benign"] - CLEAN_ACCURACY_MARGIN


def test_robust_accuracy_never_exceeds_clean(pipeline_run):
    cfg, _, rows = pipeline_run
    for key, row in rows.items():
        for attack in cfg.evaluation.attacks:
            assert row[attack] <= row["benign"] + 1e-9, (key, attack)


def test_every_protocol_has_a_labelled_row_per_model(pipeline_run):
    cfg, paths, rows = pipeline_run
    assert set(rows) == {(p, m) for p in cfg.evaluation.protocols for m in cfg.evaluation.models}
    table = (paths.evaluation / "table.md").read_text()
    for protocol in cfg.evaluation.protocols:
        assert f"| {protocol} | mid |" in table
    assert (paths.evaluation / "heatmap.png").stat().st_size > 1000


def test_a_later_transfer_evaluation_reuses_saved_sets_regenerates_missing_ones_and_reports_each(
        pipeline_run, monkeypatch, capsys):
    from dataclasses import replace

    import mid_core.attacks
    from pipeline.evaluate import evaluate_models
    from pipeline.paths import ExperimentPaths

    cfg, _, rows = pipeline_run
    attacks, folder = cfg.evaluation.attacks, ExperimentPaths.of(cfg).transfer_test
    assert sorted(p.stem for p in folder.glob("*.pt")) == sorted(attacks)  # the pipeline's evaluation kept them all
    (folder / f"{attacks[0]}.pt").unlink()  # one set lost: only it may be attacked again
    attacked = []
    real_run_attack = mid_core.attacks.run_attack

    def counting_run_attack(spec, *args, **kwargs):
        attacked.append(spec.name)
        return real_run_attack(spec, *args, **kwargs)

    monkeypatch.setattr(mid_core.attacks, "run_attack", counting_run_attack)
    capsys.readouterr()
    transfer_only = replace(cfg, evaluation=replace(cfg.evaluation, protocols=["transfer"]))
    again = {r["model"]: r for r in evaluate_models(transfer_only)}
    assert set(attacked) == {attacks[0]}
    for model in cfg.evaluation.models:  # seeded per attack: regenerated or loaded, the pipeline's cells come back
        for attack in attacks:
            assert again[model][attack] == rows[("transfer", model)][attack]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[evaluate] transfer ")]
    assert len(lines) == len(attacks)
    for k, (line, attack) in enumerate(zip(lines, attacks), start=1):  # one progress line per attack, as it ends
        assert line.startswith(f"[evaluate] transfer {attack} ({k}/{len(attacks)}) on ")
        assert ("generated" if k == 1 else "loaded") in line
        for model in cfg.evaluation.models:
            assert f"{model} {again[model][attack]:.4f}" in line
    assert (folder / f"{attacks[0]}.pt").exists()  # and kept again


def test_mlflow_holds_the_four_stage_runs_with_artifacts(pipeline_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg, _, _ = pipeline_run
    client = MlflowClient(cfg.tracking_uri())
    exp = client.get_experiment_by_name(cfg.experiment_name())
    runs = client.search_runs([exp.experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == {"teacher", "pool", "mid", "evaluate"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_stage["mid"].data.tags["parent_run"] == by_stage["pool"].info.run_id
    expected = {"teacher": "models/teacher.pt", "mid": "models/mid.pt", "evaluate": "evaluation/table.md"}
    for stage, artifact in expected.items():
        listed = [f.path for f in client.list_artifacts(by_stage[stage].info.run_id, artifact.split("/")[0])]
        assert artifact in listed, (stage, listed)
    assert any(k.startswith("step/") for k in by_stage["mid"].data.metrics), "no per-step metrics logged"
    mlflow.set_tracking_uri(None)


def test_deployed_checkpoint_loads_as_robust_model(pipeline_run):
    from mid_core import load_robust_model
    from mid_core.datasets import load_dataset

    _, paths, rows = pipeline_run
    model = load_robust_model(paths.model("mid"))
    test = load_dataset("digits", "test").subset(200)
    acc = float((model(test.images).argmax(1) == test.labels).float().mean())
    assert acc == pytest.approx(rows[("paper", "mid")]["benign"], abs=1e-6)


def test_rerunning_mid_does_not_retrain(pipeline_run):
    from pipeline import train_mid

    cfg, paths, _ = pipeline_run
    before = paths.model("mid").stat().st_mtime_ns
    train_mid.run(cfg)
    assert paths.model("mid").stat().st_mtime_ns == before


def test_two_workers_end_every_step_with_identical_parameters(pipeline_run, tmp_path):
    from mid_core.checkpoint import read_checkpoint
    from pipeline import train_mid

    cfg, paths, _ = pipeline_run
    shutil.copytree(paths.root / "models", tmp_path / "models")
    (tmp_path / "models" / "mid.pt").unlink()
    shutil.copytree(paths.stores, tmp_path / "stores")
    cfg2 = load_config(REPO / "configs" / "tiny_test.yaml", [
        f"output_dir={tmp_path}", "mid.num_workers=2", "mid.worker_cpus=0.5", "mid.epochs=1", "mid.verify_sync=true"])
    out = train_mid.run(cfg2)
    metrics = read_checkpoint(out)["metrics"]
    assert metrics["world_size"] == 2 and metrics["sync_verified"] == 1.0
    assert metrics["batches_this_epoch"] > 0
    assert metrics["max_param_divergence"] == 0.0


def test_store_datasource_streams_index_aligned_rows(pipeline_run):
    import hashlib

    import numpy as np

    from pipeline.store_datasource import adv_column, read_store
    from storage_schemas import open_store

    cfg, paths, _ = pipeline_run
    store = open_store(paths.train_pool)
    rows = store.read_rows(0, store.num_rows)

    def key(label, clean, advs):
        return (int(label), hashlib.sha1(np.ascontiguousarray(clean).tobytes() + b"".join(np.ascontiguousarray(a).tobytes() for a in advs)).hexdigest())

    expected = sorted(key(rows["label"][i], rows["clean"][i], [rows[f"adv/{n}"][i] for n in store.attack_names]) for i in range(store.num_rows))
    streamed = []
    for batch in read_store(str(paths.train_pool)).iter_batches(batch_size=300, batch_format="numpy"):
        for i in range(len(batch["label"])):
            streamed.append(key(batch["label"][i], batch["clean"][i], [batch[adv_column(n)][i] for n in store.attack_names]))
    assert sorted(streamed) == expected


def _assert_same_store(path_a, path_b):
    import numpy as np

    from storage_schemas import open_store

    a, b = open_store(path_a, require_complete=True), open_store(path_b, require_complete=True)
    ra, rb = a.read_rows(0, a.num_rows), b.read_rows(0, b.num_rows)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert np.array_equal(ra[k], rb[k]), k
    assert a.success_rates() == b.success_rates()


def _regenerate_pool(cfg, dest, *overrides):
    from pipeline.generation import generate_store

    shutil.copytree(ExperimentPaths.of(cfg).root / "models", dest / "models")
    other = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={dest}", *overrides])
    path = dest / "pool.zarr"
    generate_store(other, path, "train", other.pool.attacks, other.pool.eps, other.pool.steps,
                   other.pool.step_size, other.data.train_limit)
    return path


def test_pool_is_identical_whatever_the_number_of_actors(pipeline_run, tmp_path):
    cfg, paths, _ = pipeline_run
    assert cfg.pool.num_actors == 2
    _assert_same_store(paths.train_pool, _regenerate_pool(cfg, tmp_path, "pool.num_actors=1"))


def test_killed_generation_actor_is_restarted_and_the_store_is_identical(pipeline_run, tmp_path, monkeypatch):
    cfg, paths, _ = pipeline_run
    monkeypatch.setenv("MID_FAULT_KILL_AT_BLOCK", "3")
    monkeypatch.setenv("MID_FAULT_MARKER", str(tmp_path / "fault-fired"))
    path = _regenerate_pool(cfg, tmp_path)
    assert (tmp_path / "fault-fired").exists(), "the fault was never injected"
    _assert_same_store(paths.train_pool, path)


def _copy_inputs(paths, dest):
    shutil.copytree(paths.root / "models", dest / "models")
    (dest / "models" / "mid.pt").unlink()
    shutil.copytree(paths.stores, dest / "stores")


def test_killed_worker_resumes_and_matches_uninterrupted_run(pipeline_run, tmp_path, monkeypatch):
    import torch

    from mid_core.checkpoint import read_checkpoint
    from pipeline import train_mid

    _, paths, _ = pipeline_run
    results = {}
    for name in ("clean", "faulty"):
        out = tmp_path / name
        _copy_inputs(paths, out)
        if name == "faulty":
            monkeypatch.setenv("MID_FAULT_KILL_AT_STEP", "30")  # epoch 2 of 22-step epochs
            monkeypatch.setenv("MID_FAULT_MARKER", str(tmp_path / "fault-fired"))
        cfg = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={out}", "mid.epochs=2"])
        results[name] = read_checkpoint(train_mid.run(cfg))
    assert (tmp_path / "fault-fired").exists(), "the fault was never injected"
    clean, faulty = results["clean"], results["faulty"]
    assert clean["metrics"]["steps"] == faulty["metrics"]["steps"]
    for k, v in clean["state_dict"].items():
        assert torch.allclose(v, faulty["state_dict"][k], atol=1e-6), k


def test_continuing_a_variant_equals_one_longer_run(pipeline_run, tmp_path):
    """mid.continue_from: 1 epoch of variant `short`, continued to 2 epochs as `longer` with a learning-rate decay
    that starts after the first, writes the weights that 2 uninterrupted epochs with that schedule write (the Adam
    state travels with the student; the rate is set from the epoch)."""
    import torch

    from mid_core.checkpoint import read_checkpoint
    from pipeline import train_mid

    _, paths, _ = pipeline_run
    _copy_inputs(paths, tmp_path)
    base = [f"output_dir={tmp_path}"]
    train_mid.run(load_config(REPO / "configs" / "tiny_test.yaml", base + ["mid.variant=short", "mid.epochs=1"]))
    longer = read_checkpoint(train_mid.run(load_config(
        REPO / "configs" / "tiny_test.yaml",
        base + ["mid.variant=longer", "mid.epochs=2", "mid.continue_from=short", "mid.lr_decay_epochs=[1]"])))
    straight = read_checkpoint(train_mid.run(load_config(
        REPO / "configs" / "tiny_test.yaml", base + ["mid.variant=straight", "mid.epochs=2", "mid.lr_decay_epochs=[1]"])))
    assert longer["metrics"]["epoch"] == straight["metrics"]["epoch"] == 2
    lr = longer["config"]["mid"]["lr"]
    assert longer["metrics"]["lr"] == straight["metrics"]["lr"] == pytest.approx(lr * 0.1)  # what the optimizer used
    assert longer["metrics"]["steps"] == straight["metrics"]["steps"]
    for k, v in straight["state_dict"].items():
        assert torch.allclose(v, longer["state_dict"][k], atol=1e-6), k
    with pytest.raises(ValueError, match="already has 2 epochs"):
        train_mid.run(load_config(REPO / "configs" / "tiny_test.yaml",
                                  base + ["mid.variant=again", "mid.epochs=2", "mid.continue_from=longer"]))


def test_pool_refresh_regenerates_against_the_deployed_model(pipeline_run, tmp_path):
    from mid_core.checkpoint import read_checkpoint
    from pipeline import train_mid
    from pipeline.generation import checkpoint_fingerprint
    from storage_schemas import open_store

    _, paths, _ = pipeline_run
    _copy_inputs(paths, tmp_path)
    cfg = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={tmp_path}", "mid.epochs=2", "pool.refresh_every=1"])
    out = train_mid.run(cfg)
    refreshed = open_store(tmp_path / "stores" / "pool_train_r1.zarr", require_complete=True)
    assert refreshed.attrs["source_role"] == "deployed" and refreshed.attrs["refresh_epoch"] == 1
    assert refreshed.source_fingerprint == checkpoint_fingerprint(tmp_path / "mid_segments" / "deployed_epoch1.pt")
    assert refreshed.attrs["teacher_fingerprint"] == checkpoint_fingerprint(paths.model("teacher"))
    metrics = read_checkpoint(out)["metrics"]
    assert metrics["epoch"] == 2 and metrics["pool_version"] == 1


def test_baselines_and_ablation_variants_train_and_evaluate_side_by_side(pipeline_run, tmp_path):
    """AT (teacher stage) and the ERM variant (MID stage, mid.variant) reuse the teacher and pool and get their own
    checkpoints, MLflow runs and evaluation rows; AT is more robust white-box than the undefended teacher."""
    from mid_core.checkpoint import read_checkpoint
    from pipeline import evaluate, train_mid, train_teacher

    _, paths, _ = pipeline_run
    _copy_inputs(paths, tmp_path)
    shutil.copy(paths.model("mid"), tmp_path / "models" / "mid.pt")
    common = [f"output_dir={tmp_path}", "evaluation.models=[teacher, at, mid, erm]", "evaluation.protocols=[paper, whitebox]",
              "evaluation.attacks=[PGD_N]", "evaluation.verdict_pgd_restarts=2",
              "evaluation.verdict_pgd_steps=5", "evaluation.verdict_pgd_step_size=0.1", "at.epochs=4", "at.steps=5", "at.step_size=0.1", "at.batch_size=64"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models").iterdir()}
    train_teacher.run(load_config(REPO / "configs" / "tiny_test.yaml", common))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models").iterdir() if p.name != "at.pt"} == before
    assert read_checkpoint(tmp_path / "models" / "at.pt")["kind"] == "standard"
    erm_cfg = load_config(REPO / "configs" / "tiny_test.yaml", common + ["mid.variant=erm", "mid.epochs=2", "mid.use_meta=false",
                                                                         "mid.use_distillation=false", "mid.use_ac=false", "mid.use_cc=false"])
    train_mid.run(erm_cfg)
    assert (tmp_path / "models" / "erm.pt").exists() and (tmp_path / "models" / "mid.pt").stat().st_mtime_ns == before["mid.pt"]
    files = evaluate.run(load_config(REPO / "configs" / "tiny_test.yaml", common))
    rows = {(r["protocol"], r["model"]): r for r in json.loads(files["json"].read_text())["rows"]}
    assert set(rows) == {(p, m) for p in ("paper", "whitebox") for m in ("teacher", "at", "mid", "erm")}
    for r in rows.values():
        assert r["PGD_N"] <= r["benign"] + 1e-9
    assert rows[("whitebox", "at")]["PGD_N"] >= rows[("whitebox", "teacher")]["PGD_N"] + 0.1
    for model in ("teacher", "at", "mid", "erm"):  # the per-sample worst case is below every single attack
        row, verdict = rows[("whitebox", model)], rows[("whitebox", model)]["verdict"]
        assert verdict["per_sample_worst_case"] <= min(row["PGD_N"], verdict["pgd_restarts"]) + 1e-9
        assert verdict["images"] == 200 and verdict["worst_case_over"] == ["PGD-5x2", "PGD_N"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(erm_cfg.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(erm_cfg.experiment_name()).experiment_id])
    erm = [r for r in runs if r.data.tags.get("variant") == "erm"]
    assert len(erm) == 1 and erm[0].info.run_name == "tiny_test/erm"
    assert erm[0].data.tags["method"] == "mid[no-meta,no-dst,no-ac,no-cc]"
