"""mid.continue_from refuses, before any work, a continuation that would not equal one longer run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mid_core.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.paths import ExperimentPaths
from pipeline.train_mid import continuation_state, segments_dir

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, *overrides: str):
    return load_config(REPO / "configs" / "tiny_test.yaml",
                       [f"output_dir={tmp_path}", "mid.variant=longer", "mid.continue_from=short", *overrides])


def _finished_short_run(tmp_path: Path, epochs: int, *overrides: str, teacher_fp: str | None = None) -> Path:
    """What train_mid leaves for variant `short` after `epochs` epochs: a training state and its deployed model
    (a state without `teacher_fingerprint`, as older versions wrote, unless `teacher_fp` is given)."""
    short = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={tmp_path}", "mid.variant=short",
                                                               f"mid.epochs={epochs}", *overrides])
    d = segments_dir(ExperimentPaths.of(short), "short")
    d.mkdir(parents=True)
    state = d / f"train_state_epoch{epochs}.pt"
    extra = {"teacher_fingerprint": teacher_fp} if teacher_fp else {}
    torch.save({"student": {}, "optimizer": {}, "epoch": epochs, "step": 7 * epochs, **extra}, state)
    save_checkpoint(d / f"deployed_epoch{epochs}.pt", nn.Linear(2, 2), kind="deployed",
                    backbone=short.model.backbone, config=short.to_dict())
    return state


def test_missing_variant_names_the_directory_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="train that variant first"):
        continuation_state(_config(tmp_path, "mid.epochs=3"), ExperimentPaths.of(_config(tmp_path)))


def test_latest_state_and_its_epoch_are_returned(tmp_path):
    state = _finished_short_run(tmp_path, 2)
    cfg = _config(tmp_path, "mid.epochs=5")
    assert continuation_state(cfg, ExperimentPaths.of(cfg)) == (state, 2)


def test_no_more_epochs_to_train_is_refused(tmp_path):
    _finished_short_run(tmp_path, 3)
    cfg = _config(tmp_path, "mid.epochs=3")
    with pytest.raises(ValueError, match="already has 3 epochs"):
        continuation_state(cfg, ExperimentPaths.of(cfg))


@pytest.mark.parametrize("changed", ["mid.lr=0.01", "mid.batch_size=8", "seed=5", "mid.attacks=[PGD_N]"])
def test_a_different_training_setting_is_refused(tmp_path, changed):
    _finished_short_run(tmp_path, 1)
    cfg = _config(tmp_path, "mid.epochs=2", changed)
    with pytest.raises(ValueError, match="would not equal one longer run"):
        continuation_state(cfg, ExperimentPaths.of(cfg))


def test_a_different_teacher_is_refused(tmp_path):
    _finished_short_run(tmp_path, 1, teacher_fp="a" * 64)
    cfg = _config(tmp_path, "mid.epochs=2")
    with pytest.raises(ValueError, match="was trained with teacher aaaaaaaaaaaa.*restore the teacher it was trained with"):
        continuation_state(cfg, ExperimentPaths.of(cfg), "b" * 64)


def test_the_same_teacher_is_accepted(tmp_path):
    state = _finished_short_run(tmp_path, 1, teacher_fp="a" * 64)
    cfg = _config(tmp_path, "mid.epochs=2")
    assert continuation_state(cfg, ExperimentPaths.of(cfg), "a" * 64) == (state, 1)


def test_the_teacher_in_use_is_read_from_the_output_dir(tmp_path):
    from pipeline.generation import checkpoint_fingerprint

    cfg = _config(tmp_path, "mid.epochs=2")
    teacher = ExperimentPaths.of(cfg).model("teacher")
    save_checkpoint(teacher, nn.Linear(2, 2), kind="teacher", backbone=cfg.model.backbone)
    _finished_short_run(tmp_path, 1, teacher_fp=checkpoint_fingerprint(teacher))
    save_checkpoint(teacher, nn.Linear(3, 3), kind="teacher", backbone=cfg.model.backbone)  # retrained since
    with pytest.raises(ValueError, match="Retrain 'short' with this teacher"):
        continuation_state(cfg, ExperimentPaths.of(cfg))


def test_an_old_state_without_teacher_fingerprint_is_accepted_with_a_warning(tmp_path, capsys):
    state = _finished_short_run(tmp_path, 1)
    cfg = _config(tmp_path, "mid.epochs=2")
    assert continuation_state(cfg, ExperimentPaths.of(cfg), "b" * 64) == (state, 1)
    assert "records no teacher fingerprint" in capsys.readouterr().out


def test_a_decay_that_starts_after_the_trained_epochs_is_accepted(tmp_path):
    state = _finished_short_run(tmp_path, 2)
    cfg = _config(tmp_path, "mid.epochs=4", "mid.lr_decay_epochs=[2]")
    assert continuation_state(cfg, ExperimentPaths.of(cfg)) == (state, 2)


def test_a_decay_inside_the_trained_epochs_is_refused(tmp_path):
    _finished_short_run(tmp_path, 2)
    cfg = _config(tmp_path, "mid.epochs=4", "mid.lr_decay_epochs=[1]")
    with pytest.raises(ValueError, match="trained epoch 2 at learning rate .* decay epochs at or after epoch 2"):
        continuation_state(cfg, ExperimentPaths.of(cfg))


def test_a_decayed_run_continues_only_with_its_own_schedule(tmp_path):
    state = _finished_short_run(tmp_path, 3, "mid.lr_decay_epochs=[1]")
    same = _config(tmp_path, "mid.epochs=5", "mid.lr_decay_epochs=[1]")
    assert continuation_state(same, ExperimentPaths.of(same)) == (state, 3)
    undecayed = _config(tmp_path, "mid.epochs=5")
    with pytest.raises(ValueError, match="trained epoch 2 at learning rate"):
        continuation_state(undecayed, ExperimentPaths.of(undecayed))
