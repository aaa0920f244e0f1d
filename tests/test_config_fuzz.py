"""Property-based: malformed configs never escape as anything but a one-line ConfigError."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import SECTIONS as MODELS
from pipeline.config import ConfigError, ExperimentConfig, config_from_dict

SECTIONS = {name: sorted(model.model_fields) for name, model in MODELS.items()}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8), st.lists(st.text(max_size=6), max_size=3),
                    st.lists(st.integers(-3, 30), max_size=3),
                    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), st.integers(), max_size=2))


@st.composite
def malformed_configs(draw):
    raw: dict = {}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(SECTIONS) + ["bogus", "seed", "name"]))
        if section in SECTIONS and draw(st.booleans()):
            key = draw(st.sampled_from(SECTIONS[section] + ["nope"]))
            raw.setdefault(section, {})
            if isinstance(raw[section], dict):
                raw[section][key] = draw(scalars)
        else:
            raw[section] = draw(scalars)
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_configs())
def test_malformed_configs_raise_only_one_line_config_errors(raw):
    try:
        cfg = config_from_dict(raw, check_data=False)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "http" not in message, message
    else:
        assert isinstance(cfg, ExperimentConfig)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_rejected(value):
    with pytest.raises(ConfigError, match="mid.lr must be a finite number"):
        config_from_dict({"mid": {"lr": value}}, check_data=False)
