"""The analysis stage (``mid analyze``, ``pipeline/stages/analyze.py``) and the measures behind its figures
(``mid_core/analysis``).

One module-scoped tiny run: an untrained ``lenet_tiny`` teacher, MID trained two steps on digits by the real
training function (so its epoch checkpoints carry the per-epoch sparsity metric), an untrained AT model; the stage
runs on it through the command line, without MLflow.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mid_core.analysis import (
    PSNR_CAP, benign_similarity, high_pass, low_pass, psnr_ssim, relative_feature_distance, squared_weight_sum,
)
from mid_core.checkpoint import load_classifier, read_checkpoint, save_checkpoint
from mid_core.datasets import load_dataset
from mid_core.models import StandardClassifier
from pipeline.cli import main
from pipeline.config import ANALYSIS_FIGURES, load_config
from pipeline.stages import analyze
from pipeline.stages.mid import SPARSITY_METRIC
from mid_worker_helpers import run_worker

ANALYSIS = {"images": 40, "attacks": ["PGD_N", "FGSM_N"], "show": 4, "grid_images": 1, "tsne_images": 16,
            "frequency_radii": [0, 4, 20]}
FILES = ["reconstruction", "regeneration", "gradients", "tsne", "sparsity", "attention", "frequency_low_pass",
         "frequency_high_pass"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny experiment folder with teacher, MID (2 epochs, epoch checkpoints kept) and AT, and its config."""
    out = tmp_path_factory.mktemp("analysis_run")
    folder, cfg = run_worker(out, rows=32, epochs=2)
    shutil.copy(folder / "deployed_epoch2.pt", out / "models" / "mid.pt")
    torch.manual_seed(1)
    save_checkpoint(out / "models" / "at.pt", StandardClassifier.from_backbone("lenet_tiny"), kind="standard",
                    backbone="lenet_tiny")
    raw = cfg.to_dict()
    raw["evaluation"].update({"protocols": ["whitebox"], "steps": 3, "step_size": 0.1})
    raw["analysis"].update(ANALYSIS)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return out, path


@pytest.fixture(scope="module")
def analysed(run_dir, tmp_path_factory):
    """``mid analyze`` on the tiny run, with MLflow reported as not installed: (output dir, config path)."""
    out, path = run_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pipeline.tracking.mlflow_available", lambda: False)
        assert main(["analyze", "--config", str(path)]) == 0
    return out, path


def _json(out: Path, name: str) -> dict:
    return json.loads((out / "analysis" / f"{name}.json").read_text())


def test_every_figure_is_a_png_with_its_numbers(analysed):
    import matplotlib.image

    out, _ = analysed
    for name in FILES:
        image = matplotlib.image.imread(out / "analysis" / f"{name}.png")
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
        assert _json(out, name)["available"] is True, name
    index = _json(out, "index")
    assert set(index["figures"]) == set(ANALYSIS_FIGURES)
    assert all(entry["available"] for entry in index["figures"].values())
    assert index["models"] == {"undefended": "teacher", "at": "at", "mid": "mid"}
    assert not (out / "mlflow.db").exists()  # tracking off: files only


def test_regeneration_reports_quality_and_teacher_accuracy_per_domain(analysed):
    out, _ = analysed
    domains = _json(out, "regeneration")["domains"]
    assert list(domains) == ["benign", *ANALYSIS["attacks"]]
    for name, numbers in domains.items():
        for path in ("student", "teacher"):
            assert 0.0 <= numbers[path]["teacher_accuracy"] <= 1.0
            assert -1.0 <= numbers[path]["ssim"] <= 1.0 and numbers[path]["psnr_db"] < PSNR_CAP
    assert domains["benign"]["input"]["ssim"] == 1.0  # the benign input is the clean image itself
    assert domains["PGD_N"]["input"]["ssim"] < 1.0


def test_frequency_curves_have_one_accuracy_per_radius(analysed):
    out, _ = analysed
    low, high = _json(out, "frequency_low_pass"), _json(out, "frequency_high_pass")
    assert low["radii"] == ANALYSIS["frequency_radii"]
    for curves in (low["accuracy"], high["accuracy"]):
        assert set(curves) == {"undefended", "at", "mid"}
        assert all(len(acc) == len(ANALYSIS["frequency_radii"]) for per in curves.values() for acc in per.values())
    # radius 20 is beyond the corner frequency of 28x28 images: the low-pass image is the image itself
    teacher = load_classifier(out / "models" / "teacher.pt")
    x = load_dataset("digits", "test").subset(ANALYSIS["images"])
    from mid_core.evaluation import accuracy

    assert low["accuracy"]["undefended"]["benign"][-1] == pytest.approx(accuracy(teacher, x.images, x.labels))


def test_sparsity_curve_reads_the_metric_mid_training_records(analysed):
    out, _ = analysed
    epochs = _json(out, "sparsity")["epochs"]
    assert list(epochs) == ["0", "1", "2"]
    for epoch in (1, 2):
        path = out / "training" / "mid" / f"deployed_epoch{epoch}.pt"
        recorded = read_checkpoint(path)["metrics"][SPARSITY_METRIC]
        assert recorded == pytest.approx(squared_weight_sum(load_classifier(path).encoder))
        assert epochs[str(epoch)]["value"] == pytest.approx(recorded)
    teacher = load_classifier(out / "models" / "teacher.pt")
    assert epochs["0"]["value"] == pytest.approx(squared_weight_sum(teacher.encoder))
    assert epochs["2"]["value"] != pytest.approx(epochs["0"]["value"])  # training moved the weights


def test_tsne_reports_relative_feature_distances(analysed):
    out, _ = analysed
    numbers = _json(out, "tsne")
    assert set(numbers["relative_feature_distance"]) == {"undefended", "mid"}
    assert all(v > 0 for per in numbers["relative_feature_distance"].values() for v in per.values())
    assert len(numbers["embedding"]["mid"]["benign"]) == ANALYSIS["tsne_images"]


def test_psnr_and_ssim_are_maximal_for_a_perfect_regeneration_and_lower_for_noise():
    x = load_dataset("digits", "test").images[:6]
    psnr, ssim = psnr_ssim(x, x.clone())
    assert (psnr == PSNR_CAP).all() and ssim == pytest.approx([1.0] * 6)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    psnr_n, ssim_n = psnr_ssim(x, noisy)
    assert (psnr_n < 30).all() and (ssim_n < 0.95).all()
    worse_psnr, worse_ssim = psnr_ssim(x, (x + 0.3 * (noisy - x) / 0.1).clamp(0, 1))
    assert (worse_psnr < psnr_n).all() and (worse_ssim < ssim_n).all()


def test_low_pass_at_radius_zero_is_the_mean_and_high_pass_is_the_complement():
    x = torch.rand(3, 2, 28, 28, generator=torch.Generator().manual_seed(0))
    mean = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    torch.testing.assert_close(low_pass(x, 0), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(high_pass(x, 0), x - mean, atol=1e-6, rtol=0)
    for radius in (0, 3, 9):
        torch.testing.assert_close(low_pass(x, radius) + high_pass(x, radius), x, atol=1e-6, rtol=0)
    full = 28 * 2 ** 0.5 / 2  # the corner frequency
    torch.testing.assert_close(low_pass(x, full), x, atol=1e-5, rtol=0)
    assert high_pass(x, full).abs().max() < 1e-5
    assert (low_pass(x, 3) - mean).abs().max() > 1e-3  # a larger disc keeps more than the mean


def test_relative_feature_distance_is_zero_for_identical_features():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(30, 8, generator=g), torch.arange(30) % 3
    assert relative_feature_distance(feats, feats.clone(), labels) == 0.0
    assert relative_feature_distance(feats, feats + 0.5 * torch.randn(30, 8, generator=g), labels) > 0.0
    with pytest.raises(ValueError, match="two classes"):
        relative_feature_distance(feats, feats, torch.zeros(30, dtype=torch.long))


def test_benign_similarity_is_one_for_unchanged_maps():
    maps = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    assert benign_similarity(maps, 2 * maps) == pytest.approx([1.0] * 4)
    assert (benign_similarity(maps, torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(1))) < 1).all()


class _TokenEncoder(nn.Module):
    """An encoder with no spatial feature map: images -> one vector per image, like a ViT's pooled tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(28 * 28, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def test_a_teacher_without_decoder_and_a_token_encoder_get_notes_not_crashes(run_dir, tmp_path):
    _, path = run_dir
    cfg = load_config(path)
    inp = analyze.load_inputs(cfg)
    inp.teacher = copy.deepcopy(inp.teacher)
    inp.teacher.decoder = None
    torch.manual_seed(0)
    tokens = StandardClassifier(_TokenEncoder(), nn.Linear(12, 10)).eval()
    inp.models = {"undefended": tokens, "mid": tokens}
    inp.roles = {"undefended": "teacher", "mid": "mid"}
    done = analyze.make_figures(inp, ["reconstruction", "regeneration", "attention", "gradients"], tmp_path)
    for name in ("reconstruction", "regeneration"):
        assert not done[name]["available"] and "no decoder" in done[name]["reason"]
        note = json.loads((tmp_path / f"{name}.json").read_text())
        assert note["available"] is False and "no decoder" in note["reason"]
        assert not (tmp_path / f"{name}.png").exists()
    assert not done["attention"]["available"] and "spatial feature map" in done["attention"]["reason"]
    assert done["gradients"]["available"] and (tmp_path / "gradients.png").exists()
