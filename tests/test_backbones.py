"""Every registered backbone: shapes, a bounded decoder, one MID meta step reaching every student parameter,
checkpoint round trips, BatchNorm statistics in the second-order step, and the config's refusals."""
from __future__ import annotations

import pytest
import torch

from mid_core.backbones import BACKBONES
from mid_core.checkpoint import load_classifier, load_teacher, save_checkpoint
from mid_core.losses import LossWeights
from mid_core.meta_step import MetaConfig, meta_step
from mid_core.models import Teacher, classifier_of, student_from_teacher

SMALL = [n for n in BACKBONES if n.endswith("_tiny") or n.startswith("lenet")]


def _inputs(name: str, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    size = BACKBONES[name].image_size
    channels = 1 if size == 28 else 3
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _teacher(name: str) -> Teacher:
    torch.manual_seed(0)
    return Teacher.from_backbone(name, 1 if BACKBONES[name].image_size == 28 else 3, 10)


@pytest.mark.parametrize("name", SMALL)
def test_parts_fit_together_and_the_decoder_output_is_an_image_in_the_unit_range(name):
    teacher = _teacher(name)
    x, _ = _inputs(name)
    logits, recon = teacher(x)
    assert logits.shape == (2, 10)
    if BACKBONES[name].has_decoder:
        assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    else:
        assert recon is None and teacher.decoder is None


@pytest.mark.parametrize("name", SMALL)
def test_one_second_order_meta_step_gives_every_student_parameter_a_finite_nonzero_gradient(name):
    teacher = _teacher(name).freeze()
    student = student_from_teacher(teacher, "random")
    x, y = _inputs(name, seed=1)
    views = {"benign": x, "PGD_N": (x + 0.03 * torch.randn_like(x)).clamp(0, 1), "MIM_N": (x * 0.9)}
    cc = 0.8 if BACKBONES[name].has_decoder else 0.0
    weights = LossWeights(ac=1.5, cc=cc, lc=1.0)
    result = meta_step(student, teacher, views, y, "PGD_N", MetaConfig(train_weights=weights, test_weights=weights))
    named = dict(student.named_parameters())
    assert set(result.grads) == set(named)
    for n, g in result.grads.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, n


@pytest.mark.parametrize("name", ["resnet18_tiny", "vit_tiny"])
def test_checkpoints_round_trip_to_the_same_outputs(name, tmp_path):
    teacher = _teacher(name).eval()
    x, _ = _inputs(name)
    save_checkpoint(tmp_path / "t.pt", teacher, kind="teacher", backbone=name, in_channels=3, num_classes=10)
    # frozen attention may take PyTorch's fused inference path: equal up to float rounding
    assert torch.allclose(load_teacher(tmp_path / "t.pt").encoder(x), teacher.encoder(x), atol=1e-5)
    assert torch.allclose(load_classifier(tmp_path / "t.pt")(x), classifier_of(teacher)(x), atol=1e-5)


def test_the_cifar_stem_keeps_the_full_resolution_in_the_first_stage():
    encoder = _teacher("resnet18_tiny").encoder
    x, _ = _inputs("resnet18_tiny")
    assert encoder.layer1(encoder.relu(encoder.bn1(encoder.conv1(x)))).shape[-2:] == (32, 32)
    assert encoder(x).shape[-2:] == (4, 4)


def test_the_meta_step_updates_batchnorm_statistics_once_as_one_training_forward_of_the_meta_train_views():
    teacher = _teacher("resnet18_tiny").freeze()
    student = student_from_teacher(teacher, "teacher")
    reference = student_from_teacher(teacher, "teacher")
    x, y = _inputs("resnet18_tiny", n=4, seed=2)
    views = {"benign": x, "PGD_N": (x + 0.05).clamp(0, 1), "MIM_N": (x * 0.8)}
    meta_step(student, teacher, views, y, "PGD_N", MetaConfig())
    with torch.no_grad():
        reference(torch.cat([views["MIM_N"], views["benign"]]))  # the meta-train domains, sorted, in one batch
    for (n, a), (_, b) in zip(student.named_buffers(), reference.named_buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n


def test_a_backbone_without_decoder_refuses_cyclic_consistency_and_reconstruction_with_the_setting_to_change():
    from pipeline.config import ConfigError, config_from_dict

    vit = {"data": {"dataset": "digits"}, "model": {"backbone": "vit_tiny"}}
    with pytest.raises(ConfigError, match="mid.use_cc: false"):
        config_from_dict({**vit, "teacher": {"recon_weight": 0}})
    with pytest.raises(ConfigError, match="teacher.recon_weight: 0"):
        config_from_dict({**vit, "mid": {"use_cc": False}})
    config_from_dict({**vit, "mid": {"use_cc": False}, "teacher": {"recon_weight": 0}})


def test_a_teacher_without_decoder_trains_on_cross_entropy_alone():
    from mid_core.training import teacher_epoch

    teacher = _teacher("vit_tiny")
    x, y = _inputs("vit_tiny")
    before = [p.detach().clone() for p in teacher.parameters()]
    metrics = teacher_epoch(teacher, [(x, y)], torch.optim.Adam(teacher.parameters(), lr=1e-3), "bce", 1.0)
    assert metrics["ce"] > 0 and metrics["recon"] == 0
    assert all(not torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_an_unknown_backbone_lists_the_registered_ones():
    from mid_core.backbones import backbone_parts

    with pytest.raises(ValueError, match="resnet18"):
        backbone_parts("resnet19")


def test_vit_weights_load_from_a_torchvision_state_dict_and_a_missing_file_names_the_fix(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    from mid_core.backbones.vit import VIT_TINY, load_torchvision_weights

    source = VisionTransformer(image_size=224, patch_size=16, num_classes=10, **VIT_TINY)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    teacher = _teacher("vit_tiny").eval()
    assert load_torchvision_weights(teacher.encoder, teacher.classifier, tmp_path / "vit.pth") == []
    x, _ = _inputs("vit_tiny")
    assert torch.allclose(classifier_of(teacher)(x), source.eval()(x), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="torch.save"):
        load_torchvision_weights(teacher.encoder, teacher.classifier, tmp_path / "missing.pth")
