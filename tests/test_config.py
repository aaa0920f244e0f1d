"""Config loading fails before any work, with a message that names the key and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["digits_lenet", "mnist_lenet5", "fmnist_lenet5", "tiny_test"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.name == name


def test_unknown_key_is_rejected_with_suggestion():
    with pytest.raises(ConfigError, match=r"mid\.epoch'.*Did you mean 'epochs'"):
        config_from_dict({"mid": {"epoch": 3}})


def test_unknown_attack_is_rejected():
    with pytest.raises(ConfigError, match="pool.attacks.*PGX_N"):
        config_from_dict({"pool": {"attacks": ["PGX_N"]}})


@pytest.mark.parametrize("eps", [0, -0.1, 1.5])
def test_eps_outside_unit_interval_is_rejected(eps):
    with pytest.raises(ConfigError, match=r"pool.eps must be in \(0, 1\]"):
        config_from_dict({"pool": {"eps": eps}})


def test_nonpositive_steps_rejected():
    with pytest.raises(ConfigError, match="pool.steps must be > 0"):
        config_from_dict({"pool": {"steps": 0}})


def test_negative_loss_weight_rejected():
    with pytest.raises(ConfigError, match="mid.train_weights.cc must be >= 0"):
        config_from_dict({"mid": {"train_weights": {"cc": -1}}})


def test_unknown_backbone_and_dataset_rejected():
    with pytest.raises(ConfigError, match="model.backbone 'resnet9000' is unknown"):
        config_from_dict({"model": {"backbone": "resnet9000"}})
    with pytest.raises(ConfigError, match="data.dataset 'cifar1000' is unknown"):
        config_from_dict({"data": {"dataset": "cifar1000"}})


def test_pool_needs_an_attack_besides_benign():
    with pytest.raises(ConfigError, match="at least two domains"):
        config_from_dict({"pool": {"attacks": []}})


def test_evaluation_only_attacks_refused_in_pool():
    with pytest.raises(ConfigError, match="evaluation-only"):
        config_from_dict({"pool": {"attacks": ["PGD_N", "CW_N"]}})


def test_missing_data_root_names_the_path_and_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"not found under .*data.root.*MID_DATA_ROOT"):
        config_from_dict({"data": {"dataset": "mnist", "root": str(tmp_path)}})


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="mid.epochs must be an integer"):
        config_from_dict({"mid": {"epochs": "three"}})


def test_overrides_apply_and_validate(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"dataset": "digits"}}))
    cfg = load_config(path, ["mid.epochs=7", "pool.attacks=[PGD_N, MIM_T]"])
    assert cfg.mid.epochs == 7 and cfg.pool.attacks == ["PGD_N", "MIM_T"]
    with pytest.raises(ConfigError, match="unknown config key 'mid.nope'"):
        load_config(path, ["mid.nope=1"])


def test_missing_config_file_message(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
