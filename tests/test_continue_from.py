"""Where MID training starts: its own latest state, or ``mid.continue_from``'s, refused before any work when
continuing would not equal one longer run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import MissingInputError, StaleInputError, UserError
from pipeline.paths import ExperimentPaths
from pipeline.stages.mid import starting_state, state_path

REPO = Path(__file__).resolve().parents[1]
TEACHER = "a" * 64


def _config(tmp_path: Path, *overrides: str):
    return load_config(REPO / "configs" / "tiny_test.yaml",
                       [f"output_dir={tmp_path}", "mid.variant=longer", "mid.continue_from=short", *overrides])


def _finished(tmp_path: Path, variant: str, epochs: int, *overrides: str, teacher_fp: str = TEACHER) -> Path:
    """The training state a run of ``variant`` leaves after ``epochs`` epochs."""
    cfg = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={tmp_path}", f"mid.variant={variant}",
                                                             f"mid.epochs={epochs}", *overrides])
    folder = ExperimentPaths.of(cfg).training(variant)
    folder.mkdir(parents=True, exist_ok=True)
    path = state_path(folder, epochs)
    torch.save({"student": {}, "optimizer": {}, "epoch": epochs, "step": 7 * epochs, "teacher_fingerprint": teacher_fp,
                "config": cfg.to_dict()}, path)
    return path


def _start(cfg, teacher_fp: str = TEACHER):
    return starting_state(cfg, ExperimentPaths.of(cfg), teacher_fp)


def test_a_fresh_variant_starts_at_epoch_zero(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={tmp_path}"])
    assert _start(cfg) == (None, 0)


def test_a_missing_source_variant_names_the_directory_and_the_fix(tmp_path):
    with pytest.raises(MissingInputError, match="train that variant first"):
        _start(_config(tmp_path, "mid.epochs=3"))


def test_the_source_variants_latest_state_and_its_epoch_are_returned(tmp_path):
    _finished(tmp_path, "short", 1)
    state = _finished(tmp_path, "short", 2)
    assert _start(_config(tmp_path, "mid.epochs=5")) == (state, 2)


def test_the_variants_own_state_wins_over_its_source(tmp_path):
    """A rerun (or a restarted worker group) resumes the variant itself, not the run it continued from."""
    _finished(tmp_path, "short", 2)
    own = _finished(tmp_path, "longer", 3, "mid.continue_from=short")
    assert _start(_config(tmp_path, "mid.epochs=5")) == (own, 3)


def test_no_more_epochs_to_train_is_refused(tmp_path):
    _finished(tmp_path, "short", 3)
    with pytest.raises(UserError, match="already has 3 epochs"):
        _start(_config(tmp_path, "mid.epochs=3"))


@pytest.mark.parametrize("changed", ["mid.lr=0.01", "mid.batch_size=8", "seed=5", "mid.attacks=[PGD_N]"])
def test_a_different_training_setting_is_refused(tmp_path, changed):
    _finished(tmp_path, "short", 1)
    with pytest.raises(UserError, match="would not equal one longer run"):
        _start(_config(tmp_path, "mid.epochs=2", changed))


def test_a_resumed_run_with_changed_settings_is_refused_with_the_fix(tmp_path):
    _finished(tmp_path, "mid", 1)
    cfg = load_config(REPO / "configs" / "tiny_test.yaml", [f"output_dir={tmp_path}", "mid.batch_size=8"])
    with pytest.raises(UserError, match="Pass --force"):
        _start(cfg)


def test_a_different_teacher_is_refused(tmp_path):
    _finished(tmp_path, "short", 1)
    with pytest.raises(StaleInputError, match="was trained with teacher aaaaaaaaaaaa.*restore the teacher"):
        _start(_config(tmp_path, "mid.epochs=2"), "b" * 64)


def test_a_decay_that_starts_after_the_trained_epochs_is_accepted(tmp_path):
    state = _finished(tmp_path, "short", 2)
    assert _start(_config(tmp_path, "mid.epochs=4", "mid.lr_decay_epochs=[2]")) == (state, 2)


def test_a_decay_inside_the_trained_epochs_is_refused(tmp_path):
    _finished(tmp_path, "short", 2)
    with pytest.raises(UserError, match="trained epoch 2 at learning rate .* decay epochs at or after epoch 2"):
        _start(_config(tmp_path, "mid.epochs=4", "mid.lr_decay_epochs=[1]"))


def test_a_decayed_run_continues_only_with_its_own_schedule(tmp_path):
    state = _finished(tmp_path, "short", 3, "mid.lr_decay_epochs=[1]")
    assert _start(_config(tmp_path, "mid.epochs=5", "mid.lr_decay_epochs=[1]")) == (state, 3)
    with pytest.raises(UserError, match="trained epoch 2 at learning rate"):
        _start(_config(tmp_path, "mid.epochs=5"))
