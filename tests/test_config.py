"""Config loading fails before any work, with a message that names the key and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import BASE_MODELS, ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(str(p.relative_to(REPO / "configs").with_suffix("")) for p in (REPO / "configs").rglob("*.yaml")))
def test_shipped_configs_load(name):
    from mid_core.datasets import COLOUR_SETS

    cfg = load_config(REPO / "configs" / f"{name}.yaml", check_data=False)
    if cfg.data.dataset not in COLOUR_SETS:  # those need data this machine does not have (tests/test_paper_configs.py)
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
    if "/" in name:  # a variant of the experiment its folder is named after: same name and output_dir, own mid.variant
        experiment, variant = name.split("/")
        assert (cfg.name, cfg.mid.variant) == (experiment, variant)
    else:
        assert cfg.name == name
        for model in cfg.evaluation.models:  # every evaluation row has a config that trains it
            assert model in BASE_MODELS or model == cfg.mid.variant or \
                (REPO / "configs" / name / f"{model}.yaml").exists(), model


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


def test_unknown_kl_reduction_rejected_and_known_one_reaches_the_meta_step():
    with pytest.raises(ConfigError, match="mid.kl_reduction must be 'batchmean'.*got 'mean'"):
        config_from_dict({"mid": {"kl_reduction": "mean"}})
    from pipeline.stages.mid import meta_config

    assert meta_config(config_from_dict({"mid": {"kl_reduction": "elementmean"}})).kl_reduction == "elementmean"


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


def test_base_config_is_merged_under_the_ablation(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "b", "data": {"dataset": "digits"},
                                                         "mid": {"epochs": 3, "lr": 0.01}}))
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "mid": {"variant": "no_meta", "use_meta": False}}))
    cfg = load_config(tmp_path / "abl.yaml")
    assert (cfg.name, cfg.mid.epochs, cfg.mid.lr, cfg.mid.use_meta, cfg.mid.variant) == ("b", 3, 0.01, False, "no_meta")


def test_base_config_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


def test_no_distillation_with_ac_or_cc_is_rejected():
    with pytest.raises(ConfigError, match="use_ac: false"):
        config_from_dict({"mid": {"use_distillation": False}})
    cfg = config_from_dict({"mid": {"use_distillation": False, "use_ac": False, "use_cc": False}})
    assert not cfg.mid.use_distillation


def test_training_attacks_must_be_in_the_pool():
    with pytest.raises(ConfigError, match="subset of pool.attacks"):
        config_from_dict({"pool": {"attacks": ["PGD_N", "MIM_N"]}, "mid": {"attacks": ["BIM_N"]}})
    assert config_from_dict({"pool": {"attacks": ["PGD_N", "MIM_N"]}, "mid": {"attacks": ["MIM_N"]}}).mid.attacks == ["MIM_N"]


@pytest.mark.parametrize("variant", ["teacher", "at", "Bad Name", "1mid", ""])
def test_bad_or_reserved_variant_name_is_rejected(variant):
    with pytest.raises(ConfigError, match="mid.variant"):
        config_from_dict({"mid": {"variant": variant}})


def test_evaluation_rows_accept_at_and_variant_names_only():
    cfg = config_from_dict({"evaluation": {"models": ["teacher", "at", "mid", "erm", "no_cc"]}})
    assert cfg.evaluation.models[-1] == "no_cc"
    with pytest.raises(ConfigError, match="evaluation.models"):
        config_from_dict({"evaluation": {"models": ["teacher", "MID!"]}})


def test_adversarial_training_settings_are_checked():
    with pytest.raises(ConfigError, match="at.eps"):
        config_from_dict({"at": {"eps": 3.0}})
    with pytest.raises(ConfigError, match="at.steps"):
        config_from_dict({"at": {"steps": 0}})


def test_continue_from_needs_another_variant_and_a_static_pool():
    with pytest.raises(ConfigError, match="another variant than mid.variant"):
        config_from_dict({"mid": {"variant": "mid_long", "continue_from": "mid_long"}})
    with pytest.raises(ConfigError, match="static pool only"):
        config_from_dict({"mid": {"variant": "mid_long", "continue_from": "mid"}, "pool": {"refresh_every": 1}})
    assert config_from_dict({"mid": {"variant": "mid_long", "continue_from": "mid"}}).mid.continue_from == "mid"


def test_online_attacks_leave_no_pool_to_refresh_or_continue():
    with pytest.raises(ConfigError, match="pool.refresh_every: 0"):
        config_from_dict({"mid": {"online_attacks": True}, "pool": {"refresh_every": 1}})
    with pytest.raises(ConfigError, match="mid.continue_from: null"):
        config_from_dict({"mid": {"variant": "mid_long", "online_attacks": True, "continue_from": "mid"}})
    assert config_from_dict({"mid": {"online_attacks": True}}).mid.online_attacks


@pytest.mark.parametrize("decay", [[0], [5, 3], [3, 3], [2.5], [True]])
def test_lr_decay_epochs_must_be_increasing_positive_epoch_numbers(decay):
    with pytest.raises(ConfigError, match="mid.lr_decay_epochs"):
        config_from_dict({"mid": {"lr_decay_epochs": decay}})


@pytest.mark.parametrize("factor", [0.0, -0.1, 1.5])
def test_lr_decay_factor_must_be_in_the_unit_interval(factor):
    with pytest.raises(ConfigError, match=r"mid.lr_decay_factor must be in \(0, 1\]"):
        config_from_dict({"mid": {"lr_decay_epochs": [2], "lr_decay_factor": factor}})


def test_the_learning_rate_steps_down_after_each_decay_epoch():
    mid = config_from_dict({"mid": {"lr": 1e-3, "lr_decay_epochs": [2, 4], "lr_decay_factor": 0.5}}).mid
    assert [mid.lr_at(epoch) for epoch in range(6)] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert config_from_dict({}).mid.lr_at(1000) == config_from_dict({}).mid.lr  # no decay epochs: constant


# ---- strict types, one-line messages ---------------------------------------------------------------------------------

def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "http" not in message, message
    return message


@pytest.mark.parametrize("section, key, value, expected", [
    ("mid", "epochs", "3", "mid.epochs must be an integer.*without quotes"),
    ("mid", "epochs", 2.0, "mid.epochs must be an integer"),
    ("mid", "use_meta", 1, "mid.use_meta must be true or false"),
    ("mid", "lr", True, "mid.lr must be a finite number"),
    ("mid", "lr", "1e-3", "mid.lr must be a finite number.*write lr: 0.001"),
    ("mid", "variant", 7, "mid.variant must be a string"),
    ("pool", "attacks", "PGD_N", "pool.attacks must be a list of names"),
    ("pool", "attacks", ["PGD_N", 3], "pool.attacks must be a list of names, got 3 at position 1"),
    ("mid", "epochs", None, r"mid.epochs must be an integer, got null.*default \(5\)"),
    ("teacher", "recon_loss", "l3", "teacher.recon_loss must be 'bce', 'l2' or 'l1', got 'l3'"),
    ("evaluation", "protocols", ["paper", "grey"], "evaluation.protocols must be a list of 'paper'"),
    ("evaluation", "protocols", [], "evaluation.protocols must not be empty"),
    ("pool", "refresh_every", -1, r"pool.refresh_every must be >= 0 \(0 = static pool\)"),
    ("mid", "log_every", 0, "mid.log_every must be > 0"),
])
def test_strict_types_and_bounds_give_one_line_with_the_key_and_the_fix(section, key, value, expected):
    import re

    assert re.search(expected, _one_line_error(config_from_dict, {section: {key: value}}, check_data=False))


def test_ints_are_accepted_for_floats_and_kept_as_floats():
    cfg = config_from_dict({"mid": {"lr": 1, "train_weights": {"ac": 2}}, "pool": {"eps": 1}}, check_data=False)
    assert isinstance(cfg.mid.lr, float) and isinstance(cfg.mid.train_weights.ac, float) and cfg.pool.eps == 1.0


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    message = _one_line_error(config_from_dict, {"pool": {"zzzz": 1}}, check_data=False)
    assert "'pool.zzzz'" in message and "Valid keys here" in message and "'refresh_every'" in message
    assert "Did you mean 'mid'" in _one_line_error(config_from_dict, {"midd": {}}, check_data=False)
    assert "'mid.train_weights.acc'" in _one_line_error(config_from_dict, {"mid": {"train_weights": {"acc": 1}}})


@pytest.mark.parametrize("raw, expected", [
    ({"mid": 3}, "mid must be a section"), ({"mid": [1]}, "mid must be a section"),
    ({3: {}}, "key 3 must be a name"), ({"mid": {1: 2}}, "mid: key 1 must be a name"),
    ("x", "config must be a mapping of sections"),
])
def test_non_mappings_and_non_name_keys_are_one_line_errors(raw, expected):
    assert expected in _one_line_error(config_from_dict, raw, check_data=False)


def test_an_empty_section_means_its_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\nmid:\npool:\n  attacks: [PGD_N]\n")
    cfg = load_config(tmp_path / "c.yaml", ["mid.train_weights.cc=0"], check_data=False)
    assert cfg.mid.epochs == 5 and cfg.mid.train_weights.cc == 0 and cfg.mid.test_weights.cc == 1.0


def test_malformed_yaml_names_file_line_column_and_fix(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmid:\n  epochs: [1, 2\n  lr: 0.1\n")
    message = _one_line_error(load_config, path)
    assert str(path) in message and "line 4, column" in message and "fix the YAML syntax" in message


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert "must hold a mapping of sections" in _one_line_error(load_config, tmp_path / "list.yaml")


def test_a_missing_base_names_the_file_that_asked_for_it(tmp_path):
    (tmp_path / "v.yaml").write_text("base: nowhere.yaml\n")
    message = _one_line_error(load_config, tmp_path / "v.yaml")
    assert "nowhere.yaml" in message and "v.yaml" in message and "does not exist" in message


@pytest.mark.parametrize("override, expected", [("mid.epochs", "must look like section.key=value"),
                                                ("mid..epochs=3", "must look like section.key=value"),
                                                ("mid.epochs=[1", "not valid YAML"),
                                                ("name.sub=3", "'name' is a value, not a section"),
                                                ("mid.epochs='3'", "mid.epochs must be an integer")])
def test_bad_overrides_are_one_line_errors(tmp_path, override, expected):
    (tmp_path / "c.yaml").write_text("name: x\n")
    assert expected in _one_line_error(load_config, tmp_path / "c.yaml", [override], check_data=False)


def test_to_dict_is_plain_json_and_reads_back_to_the_same_config():
    import json

    cfg = config_from_dict({"mid": {"variant": "v1", "lr_decay_epochs": [3], "test_weights": {"cc": 0.5}}})
    raw = cfg.to_dict()
    assert json.loads(json.dumps(raw)) == raw and raw["mid"]["test_weights"] == {"ac": 1.0, "cc": 0.5, "lc": 1.0}
    assert config_from_dict(raw) == cfg


def test_a_partial_mid_section_fills_in_the_defaults():
    from pipeline.config import MidConfig

    mid = MidConfig(**{"lr": 0.01, "lr_decay_epochs": [1]})
    assert mid.lr_at(0) == 0.01 and mid.lr_at(1) == pytest.approx(0.001) and mid.epochs == 5


def test_validate_sees_attribute_writes():
    from pipeline.config import validate

    cfg = config_from_dict({})
    cfg.mid.epochs = 0
    assert "mid.epochs must be > 0" in _one_line_error(validate, cfg)


def test_online_attacks_need_no_other_setting():
    cfg = config_from_dict({"mid": {"online_attacks": True, "attacks": ["PGD_N"]}, "pool": {"attacks": ["PGD_N", "FGSM_N"]}})
    assert cfg.mid.online_attacks and cfg.mid.attacks == ["PGD_N"]


# ---- the generated reference -----------------------------------------------------------------------------------------

def test_every_field_has_a_description():
    from pipeline.config import SECTIONS, ExperimentConfig

    for model in (ExperimentConfig, *SECTIONS.values()):
        for name, info in model.model_fields.items():
            assert info.description and len(info.description) > 10, f"{model.__name__}.{name}"


def test_the_reference_lists_every_field_of_every_section():
    from pydantic import BaseModel

    from pipeline.config import SECTIONS, ExperimentConfig
    from pipeline.config_reference import render

    def keys(model, prefix=""):
        for name, info in model.model_fields.items():
            yield prefix + name
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                yield from keys(info.annotation, f"{prefix}{name}.")

    text = render()
    chapters = {title.split("`")[1] if "`" in title else "": body for title, body in
                (chunk.split("\n", 1) for chunk in text.split("\n## ")[1:])}
    top = [k for k in ExperimentConfig.model_fields if k not in SECTIONS]
    assert all(f"| `{k}` |" in chapters[""] for k in top)
    for section, model in SECTIONS.items():
        for key in keys(model):
            assert f"| `{key}` |" in chapters[section], f"{section}.{key}"
    assert "base: ../" in text and "--set" in text


def test_the_committed_reference_is_the_generated_one():
    from pipeline.config_reference import render

    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == render(), "docs/config.md is stale: run python -m pipeline.config_reference > docs/config.md"
