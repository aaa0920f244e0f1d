"""``mid.online_attacks``: the direct path's diagnostic that generates each batch's views against the current model."""
from __future__ import annotations

import pytest
import torch

from mid_core.datasets import load_dataset
from mid_core.meta_step import BENIGN
from mid_core.models import Teacher, classifier_of
from mid_core.training import param_fingerprint
from pipeline.config import ConfigError, config_from_dict
from pipeline.direct.attacks import attack_views
from pipeline.direct.training import train_mid_variant
from pipeline.generation import attack_specs

TINY = {"data": {"dataset": "digits"}, "model": {"backbone": "lenet_tiny"},
        "pool": {"attacks": ["PGD_N", "MIM_T"], "steps": 3, "step_size": 0.1},
        "mid": {"epochs": 1, "batch_size": 32, "lr": 0.003},
        "evaluation": {"limit": 32}}


def _cfg(online: bool):
    return config_from_dict({**TINY, "mid": {**TINY["mid"], "online_attacks": online}})


def _data():
    train = load_dataset("digits", "train").subset(96)
    test = load_dataset("digits", "test").subset(32)
    return train, test, {BENIGN: torch.round(train.images * 255).to(torch.uint8)}


def _no_refresh(deployed, epoch):
    raise AssertionError("an online run has no pool to refresh")


def test_each_step_attacks_the_live_model_after_the_previous_update():
    cfg, (train, test, pool) = _cfg(True), _data()
    teacher = Teacher.from_backbone("lenet_tiny").freeze()
    specs = attack_specs(cfg.pool.attacks, cfg.pool.eps, cfg.pool.steps, cfg.pool.step_size)
    calls = []

    def online(deployed, idx, step):
        calls.append((deployed, step, param_fingerprint(deployed).clone()))
        return attack_views(deployed, train.images[idx], train.labels[idx], specs, step, len(idx), True, 10)

    # the pool holds only the clean images: every attack view the steps use must come from `online`
    model, info = train_mid_variant(cfg, teacher, pool, train.labels, test, 1e9, torch.device("cpu"), _no_refresh,
                                    online=online)
    assert [step for _, step, _ in calls] == list(range(info["steps"])) and info["steps"] == 3
    assert all(deployed is model for deployed, _, _ in calls)
    prints = [fp for _, _, fp in calls] + [param_fingerprint(model)]
    assert all(not torch.equal(a, b) for a, b in zip(prints, prints[1:]))  # the weights moved between any two calls
    assert info["online_attacks"] and all(h["attack_seconds"] > 0 for h in info["history"])


@pytest.mark.parametrize("configured", [True, False])
def test_the_generator_is_given_exactly_when_the_config_asks_for_it(configured):
    train, test, pool = _data()
    teacher = Teacher.from_backbone("lenet_tiny").freeze()
    online = None if configured else (lambda deployed, idx, step: {})
    with pytest.raises(ValueError, match="go together"):
        train_mid_variant(_cfg(configured), teacher, pool, train.labels, test, 1e9, torch.device("cpu"), _no_refresh,
                          online=online)


def test_the_ray_job_refuses_online_attacks_and_names_the_direct_script():
    from pipeline import train_mid

    with pytest.raises(ConfigError, match="headline_direct"):
        train_mid.run(_cfg(True))


def test_fused_views_match_one_by_one_views_after_quantisation():
    train, _, _ = _data()
    teacher = Teacher.from_backbone("lenet_tiny").freeze()
    specs = attack_specs(["PGD_N", "PGD_T", "MIM_N", "MIM_T"], 0.3, 3, 0.1)
    x, y = train.images[:32], train.labels[:32]
    fused = attack_views(classifier_of(teacher), x, y, specs, 5, 16, True, 10, stable_seeds=True, fused=True)
    alone = attack_views(classifier_of(teacher), x, y, specs, 5, 16, True, 10, stable_seeds=True)
    for name in specs:
        assert fused[name].dtype == torch.uint8 and fused[name].shape == alone[name].shape
        # same draws and the same updates: at most a rounding step apart, in a handful of pixels
        differ = (fused[name].int() - alone[name].int()).abs()
        assert int(differ.max()) <= 1 and float((differ > 0).float().mean()) < 1e-3, name


def test_online_fused_needs_online_attacks():
    with pytest.raises(ConfigError, match="set mid.online_attacks: true"):
        config_from_dict({**TINY, "mid": {**TINY["mid"], "online_fused": True}})


def test_online_fused_refuses_attacks_it_cannot_stack():
    bad = {**TINY, "pool": {**TINY["pool"], "attacks": ["PGD_N", "FGSM_N"]},
           "mid": {**TINY["mid"], "online_attacks": True, "online_fused": True}}
    with pytest.raises(ConfigError, match=r"\['FGSM_N'\]"):
        config_from_dict(bad)
