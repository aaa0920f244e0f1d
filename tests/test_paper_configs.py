"""The paper's data sets and per-row configs: each config builds its models and takes one teacher step and one meta
step on synthetic tensors of its shape (small widths of the same code where the full model is too slow on a CPU);
data loaders read torchvision / ImageFolder layouts written here, offline; eps follows the chosen convention."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mid_core.backbones import BACKBONES
from mid_core.datasets import IMAGE_SHAPES, NUM_CLASSES, load_dataset
from pipeline.config import ConfigError, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_ROWS = ["cifar10_resnet18", "svhn_resnet50", "cifar100_densenet121", "tinyimagenet_convnext_b",
              "imagenet100_vit_s", "imagenet_vit_b"]
FAST = {"resnet18": "resnet18_tiny", "resnet50": "resnet50_tiny", "densenet121": "densenet121_tiny",
        "convnext_b": "convnext_b_tiny", "vit_s": "vit_tiny", "vit_b": "vit_tiny"}


@pytest.mark.parametrize("row", PAPER_ROWS)
def test_each_paper_row_config_trains_one_teacher_step_and_one_meta_step_at_its_shape(row):
    from mid_core.losses import LossWeights
    from mid_core.meta_step import MetaConfig, meta_step
    from mid_core.models import Teacher, student_from_teacher
    from mid_core.training import teacher_epoch

    cfg = load_config(CONFIGS / f"{row}.yaml", check_data=False)
    shape, k = IMAGE_SHAPES[cfg.data.dataset], NUM_CLASSES[cfg.data.dataset]
    assert BACKBONES[cfg.model.backbone].image_size == shape[1]
    assert cfg.teacher.batch_size == (32 if row.startswith("imagenet") else 128) and cfg.mid.lr == 1e-3
    torch.manual_seed(0)
    teacher = Teacher.from_backbone(FAST[cfg.model.backbone], shape[0], k)
    x, y = torch.rand(2, *shape), torch.randint(0, k, (2,))
    optimizer = torch.optim.Adam(teacher.parameters(), lr=cfg.teacher.lr)
    metrics = teacher_epoch(teacher, [(x, y)], optimizer, cfg.teacher.recon_loss, cfg.teacher.recon_weight)
    assert np.isfinite(metrics["ce"])
    teacher.freeze()
    student = student_from_teacher(teacher)
    weights = LossWeights(**cfg.mid.train_weights.model_dump())
    if not cfg.mid.use_cc:
        weights = LossWeights(ac=weights.ac, cc=0.0, lc=weights.lc)
    views = {"benign": x, **{a: (x + 0.01).clamp(0, 1) for a in cfg.pool.attacks[:2]}}
    result = meta_step(student, teacher, views, y, cfg.pool.attacks[0], MetaConfig(train_weights=weights,
                                                                                     test_weights=weights))
    assert all(torch.isfinite(g).all() for g in result.grads.values())


def test_imagenet_rows_leave_jsma_out_and_the_vits_run_without_cyclic_consistency():
    vit_b = load_config(CONFIGS / "imagenet_vit_b.yaml", check_data=False)
    assert "JSMA_T" not in vit_b.evaluation.attacks and not vit_b.mid.use_cc
    assert "JSMA_T" in load_config(CONFIGS / "cifar10_resnet18.yaml", check_data=False).evaluation.attacks


def test_eps_follows_the_convention_and_explicit_values_win():
    paper = config_from_dict({"data": {"dataset": "cifar10"}}, check_data=False)
    standard = config_from_dict({"data": {"dataset": "cifar10", "eps_convention": "standard"}}, check_data=False)
    explicit = config_from_dict({"data": {"dataset": "cifar10", "eps_convention": "standard"}, "pool": {"eps": 0.1}},
                                check_data=False)
    assert paper.pool.eps == paper.evaluation.eps == paper.at.eps == 0.3
    assert standard.pool.eps == standard.evaluation.eps == pytest.approx(8 / 255)
    assert explicit.pool.eps == 0.1 and explicit.evaluation.eps == pytest.approx(8 / 255)
    assert config_from_dict({"data": {"dataset": "mnist", "eps_convention": "standard"}}, check_data=False).pool.eps == 0.3


def test_attack_step_sizes_scale_with_eps():
    from mid_core.attacks import default_spec

    for name in ("PGD_N", "MIM_T", "BIM_N"):
        at_03, at_8 = default_spec(name, eps=0.3), default_spec(name, eps=8 / 255)
        assert at_8.step_size / at_8.eps == pytest.approx(at_03.step_size / at_03.eps)
    assert default_spec("PGD_N", eps=8 / 255, step_size=0.002).step_size == 0.002


def test_cifar10_loads_from_torchvision_batches(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [i % 10] * 4}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(c) for c in range(10)]}))
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # fake files: no official checksums
    train = load_dataset("cifar10", "train", tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and train.labels.tolist()[:5] == [0, 0, 0, 0, 1]
    assert torch.equal(train.images * 255, (train.images * 255).round())


def test_imagefolder_sets_load_at_their_size_with_the_tiny_imagenet_val_annotations(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    for wnid in ("n01", "n02"):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (64, 64), (40 * j, 100, 200)).save(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (0, 0, 0)).save(root / "val" / "images" / "val_0.JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\n")
    train, test = load_dataset("tinyimagenet", "train", tmp_path), load_dataset("tinyimagenet", "test", tmp_path)
    assert train.images.shape == (4, 3, 64, 64) and train.labels.tolist() == [0, 0, 1, 1]
    assert test.labels.tolist() == [1]


def test_imagenet100_keeps_the_listed_classes_only(tmp_path):
    from PIL import Image

    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n1", "n2", "n3"):
            (root / split / wnid).mkdir(parents=True)
            Image.new("RGB", (300, 260), (10, 20, 30)).save(root / split / wnid / "a.JPEG")
    (root / "imagenet100.txt").write_text("n3\nn1\n")
    data = load_dataset("imagenet100", "test", tmp_path)
    assert data.images.shape == (2, 3, 224, 224) and data.labels.tolist() == [0, 1]


@pytest.mark.parametrize("name", ["cifar10", "svhn", "tinyimagenet", "imagenet"])
def test_missing_data_is_one_config_error_naming_the_layout_and_how_to_fetch_it(name, tmp_path):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"dataset": name, "root": str(tmp_path)}})
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert ("data.download: true" in message) if name in ("cifar10", "svhn") else ("download" in message)


def test_the_colour_stand_in_is_deterministic_balanced_8_bit_and_colour():
    from mid_core import colour_datasets

    train = load_dataset("colour_digits", "train")
    colour_datasets._CACHE.clear()
    again = load_dataset("colour_digits", "train")
    assert torch.equal(train.images, again.images) and train.images.shape == (2874, 3, 32, 32)
    counts = train.labels.bincount()
    assert counts.min() > 0.9 * counts.max()
    assert torch.equal(train.images * 255, (train.images * 255).round())
    assert (train.images[:, 0] - train.images[:, 1]).abs().mean() > 0.05  # not grey
