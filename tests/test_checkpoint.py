"""Checkpoints: weights only, carry their config, refuse pickled objects, name both architectures on mismatch."""
from __future__ import annotations

import pytest
import torch

from mid_core.checkpoint import CheckpointError, load_robust_model, load_teacher, read_checkpoint, save_checkpoint
from mid_core.models import DeployedModel, Teacher, student_from_teacher


def _deployed(backbone: str = "lenet_tiny") -> DeployedModel:
    torch.manual_seed(0)
    teacher = Teacher.from_backbone(backbone)
    return DeployedModel(student_from_teacher(teacher, "random"), teacher.classifier)


def test_deployed_round_trip_gives_identical_logits(tmp_path):
    model = _deployed().eval()
    path = save_checkpoint(tmp_path / "mid.pt", model, kind="deployed", backbone="lenet_tiny", config={"seed": 3})
    loaded = load_robust_model(path)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert read_checkpoint(path)["config"] == {"seed": 3}


def test_loaded_robust_model_is_differentiable_end_to_end(tmp_path):
    path = save_checkpoint(tmp_path / "mid.pt", _deployed(), kind="deployed", backbone="lenet_tiny")
    model = load_robust_model(path)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_pickled_object_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("arbitrary code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "mid-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        read_checkpoint(path)


def test_architecture_mismatch_names_both(tmp_path):
    path = save_checkpoint(tmp_path / "t.pt", Teacher.from_backbone("lenet_tiny"), kind="teacher", backbone="lenet_tiny")
    payload = torch.load(path, weights_only=True)
    payload["backbone"] = "lenet5"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"architecture mismatch.*'lenet5'"):
        load_teacher(path)


def test_loaded_teacher_is_frozen(tmp_path):
    path = save_checkpoint(tmp_path / "t.pt", Teacher.from_backbone("lenet_tiny"), kind="teacher", backbone="lenet_tiny")
    teacher = load_teacher(path)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_load_robust_model_loads_every_zoo_kind_as_an_images_to_logits_model(tmp_path):
    """models/ holds undefended teachers and AT models next to MID: one loader for all, frozen, eval mode."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    teacher = Teacher.from_backbone("lenet_tiny").eval()
    path = save_checkpoint(tmp_path / "t.pt", teacher, kind="teacher", backbone="lenet_tiny")
    loaded = load_robust_model(path)
    assert torch.allclose(loaded(x), teacher.classifier(teacher.encoder(x)))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.save({"not": "a checkpoint"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        load_robust_model(tmp_path / "bad.pt")


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(CheckpointError, match="train it first"):
        read_checkpoint(tmp_path / "absent.pt")


def test_save_is_atomic_no_temp_files_left(tmp_path):
    save_checkpoint(tmp_path / "m.pt", _deployed(), kind="deployed", backbone="lenet_tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
