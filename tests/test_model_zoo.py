"""The zoo exporter copies exactly the evaluated checkpoints and documents their measured accuracies."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from mid_core import load_robust_model
from mid_core.checkpoint import save_checkpoint
from mid_core.models import StandardClassifier
from pipeline.config import config_from_dict
from pipeline.errors import MissingInputError, UserError
from pipeline.model_zoo import export


def _run(tmp_path):
    cfg = config_from_dict({"name": "zoo", "output_dir": str(tmp_path / "run"), "model": {"backbone": "lenet_tiny"},
                            "evaluation": {"models": ["teacher", "at"], "attacks": ["PGD_N"]}})
    (tmp_path / "run" / "models").mkdir(parents=True)
    torch.manual_seed(0)
    model = StandardClassifier.from_backbone("lenet_tiny")
    save_checkpoint(tmp_path / "run" / "models" / "at.pt", model, kind="standard", backbone="lenet_tiny",
                    config=cfg.to_dict(), metrics={"seed": 3000})
    return cfg, model


def test_export_copies_the_checkpoint_and_writes_its_accuracies(tmp_path):
    cfg, model = _run(tmp_path)
    row = {"protocol": "whitebox", "model": "at", "benign": 0.9876, "PGD_N": 0.5, "mean_attacks": 0.5, "mean_with_benign": 0.7438,
           "worst_case": 0.5}
    (tmp_path / "run" / "evaluation").mkdir()
    (tmp_path / "run" / "evaluation" / "results.json").write_text(
        json.dumps({"rows": [row], "test_images": 10000, "slow_attack_images": 100}))
    readme = export(cfg, ["at"], tmp_path / "zoo")
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(load_robust_model(tmp_path / "zoo" / "at.pt")(x), model.eval()(x))
    text = readme.read_text()
    assert "| whitebox | 98.76 | 50.00 | 50.00 | 74.38 | 50.00 |" in text and "seed 3000" in text


def test_export_refuses_an_unevaluated_run(tmp_path):
    cfg, _ = _run(tmp_path)
    with pytest.raises(MissingInputError, match="mid evaluate"):
        export(cfg, ["at"], tmp_path / "zoo")


def test_export_marks_attacks_a_row_did_not_run(tmp_path):
    """A white-box row evaluated on fewer attacks than the config lists gets '-' cells, not a crash."""
    cfg, _ = _run(tmp_path)
    cfg = config_from_dict({**cfg.to_dict(), "evaluation": {**cfg.to_dict()["evaluation"], "attacks": ["PGD_N", "AA_N"]}})
    row = {"protocol": "whitebox", "model": "at", "benign": 0.9876, "PGD_N": 0.5, "mean_attacks": 0.5, "mean_with_benign": 0.7438,
           "worst_case": 0.5}
    (tmp_path / "run" / "evaluation").mkdir()
    (tmp_path / "run" / "evaluation" / "results.json").write_text(
        json.dumps({"rows": [row], "test_images": 10000, "slow_attack_images": 100}))
    text = export(cfg, ["at"], tmp_path / "zoo").read_text()
    assert "| whitebox | 98.76 | 50.00 | - | 50.00 | 74.38 | 50.00 |" in text


def _results(path, rows, test_images=10000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "test_images": test_images, "slow_attack_images": 100}))
    return path


def test_export_merges_protocols_evaluated_into_separate_dirs(tmp_path):
    cfg, _ = _run(tmp_path)
    paper = {"protocol": "paper", "model": "at", "benign": 0.9, "PGD_N": 0.8, "average": 0.85, "worst_case": 0.8}
    old_wb = {"protocol": "whitebox", "model": "at", "benign": 0.9, "PGD_N": 0.7, "average": 0.8, "worst_case": 0.7}
    new_wb = {**old_wb, "PGD_N": 0.1, "average": 0.5, "worst_case": 0.1}
    first = _results(tmp_path / "a" / "results.json", [paper, old_wb])
    second = _results(tmp_path / "b" / "results.json", [new_wb])
    text = export(cfg, ["at"], tmp_path / "zoo", [first, second]).read_text()
    assert "| paper | 90.00 | 80.00 |" in text
    assert "| whitebox | 90.00 | 10.00 |" in text and "| whitebox | 90.00 | 70.00 |" not in text
    assert text.index("| paper |") < text.index("| whitebox |")  # protocols in a fixed order, whatever the files' order


def test_merging_results_of_different_test_sets_is_refused(tmp_path):
    cfg, _ = _run(tmp_path)
    row = {"protocol": "paper", "model": "at", "benign": 0.9}
    first = _results(tmp_path / "a" / "results.json", [row])
    second = _results(tmp_path / "b" / "results.json", [row], test_images=1000)
    with pytest.raises(UserError, match="disagree on"):
        export(cfg, ["at"], tmp_path / "zoo", [first, second])


def test_command_line_reads_models_from_an_overridden_output_dir(tmp_path, monkeypatch, capsys):
    """``--set output_dir=...`` points the exporter at another run folder (e.g. one made for a single evaluation)."""
    from pipeline.cli import main

    cfg, _ = _run(tmp_path)
    results = _results(tmp_path / "run" / "evaluation" / "results.json",
                       [{"protocol": "whitebox", "model": "at", "benign": 0.5, "PGD_N": 0.25}])
    config = tmp_path / "zoo.yaml"  # the same experiment, written with an output_dir that holds no models
    config.write_text(yaml.safe_dump({**cfg.to_dict(), "output_dir": "/nonexistent/elsewhere"}))
    monkeypatch.chdir(tmp_path)
    assert main(["zoo", "--config", str(config), "--models", "at", "--dest", str(tmp_path / "zoo"),
                 "--results", str(results)]) == 2
    assert "/nonexistent/elsewhere/models/at.pt does not exist" in capsys.readouterr().err
    assert main(["zoo", "--config", str(config), "--set", f"output_dir={tmp_path / 'run'}", "--models", "at",
                 "--dest", str(tmp_path / "zoo"), "--results", str(results)]) == 0
    assert "| whitebox | 50.00 | 25.00 |" in (tmp_path / "zoo" / "README.md").read_text()
