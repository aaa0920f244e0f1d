"""The Square probe (mid_core.square_probe): staged robust accuracies that never rise, and a masked model caught."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mid_core.square_probe import STAGES, square_probe

REPO = Path(__file__).resolve().parents[1]


def _cli_main():
    spec = importlib.util.spec_from_file_location("square_probe_cli", REPO / "scripts" / "square_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_stages_never_increase_and_start_at_clean_accuracy(trained):
    model, images, labels = trained
    result = square_probe(model, images[:16], labels[:16], eps=0.3, queries=5200, seed=0)
    acc = [result.accuracy[s] for s in STAGES]
    assert acc == sorted(acc, reverse=True), acc
    with torch.no_grad():
        clean = 100.0 * float((model(images[:16]).argmax(1) == labels[:16]).float().mean())
    assert result.accuracy["clean"] == pytest.approx(clean)
    assert result.strong_gap >= 0.0
    assert set(result.seconds) == set(STAGES)
    json.dumps(result.to_dict())  # the CLI prints this


def test_square_breaks_a_model_whose_gradients_are_zero(masked_case):
    model, images, labels = masked_case
    result = square_probe(model, images, labels, eps=0.3, queries=5200, seed=0)
    assert result.accuracy["clean"] == 100.0
    # gradient attacks only move by their random starts; the black-box Square finds what they miss
    assert result.accuracy["autoattack"] < result.accuracy["gradient"]
    assert result.accuracy["strong_square"] <= result.accuracy["autoattack"]


def test_model_parameters_are_restored_after_the_probe(trained):
    model, images, labels = trained
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    square_probe(model, images[:4], labels[:4], queries=5001)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(queries=5000), "not stronger than standard AutoAttack's Square"),
    (dict(restarts=0), "restarts and batch_size must be >= 1"),
    (dict(eps=0.0), "eps must be in"),
])
def test_bad_settings_fail_with_a_clear_message(trained, kwargs, message):
    model, images, labels = trained
    with pytest.raises(ValueError, match=message):
        square_probe(model, images[:4], labels[:4], **kwargs)


def test_uint8_images_are_refused_with_the_fix(trained):
    model, images, labels = trained
    with pytest.raises(ValueError, match="from_uint8"):
        square_probe(model, (images[:4] * 255).to(torch.uint8), labels[:4])


def test_cli_prints_and_writes_the_figures(tmp_path, capsys):
    # the undefended teacher: the gradient attacks break every image, so the CLI test needs no Square queries
    main = _cli_main()

    out = tmp_path / "probe.json"
    assert main(["--model", str(REPO / "models" / "mnist_lenet5_classic_20k" / "teacher.pt"), "--dataset", "mnist", "--limit", "4",
                 "--queries", "5001", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {**json.loads(out.read_text()), "total_seconds": printed["total_seconds"]}
    assert printed["images"] == 4 and printed["queries"] == 5001
    assert printed["accuracy"]["strong_square"] <= printed["accuracy"]["clean"]


def test_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    main = _cli_main()

    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "nope.pt")])
    assert "does not exist" in capsys.readouterr().err
