"""The teacher stage trains exactly the models the rest of the config uses (each costs minutes on CPU)."""
from __future__ import annotations

import pytest

from pipeline.config import config_from_dict
from pipeline.stages.common import models_to_train


def _roles(protocols: list[str], models: list[str], source: str = "teacher") -> list[str]:
    cfg = config_from_dict({"pool": {"source": source}, "evaluation": {"protocols": protocols, "models": models}})
    return [role for role, _seed in models_to_train(cfg)]


def test_paper_protocol_alone_trains_no_substitute():
    assert _roles(["paper"], ["teacher", "mid"]) == ["teacher"]


@pytest.mark.parametrize("protocols, models", [(["paper", "transfer"], ["teacher", "mid"]),
                                               (["paper"], ["teacher", "substitute"])])
def test_substitute_is_trained_when_transfer_or_its_row_needs_it(protocols, models):
    assert "substitute" in _roles(protocols, models)


def test_standard_and_at_follow_the_pool_source_and_the_rows():
    assert _roles(["whitebox"], ["teacher", "at", "mid"], source="standard") == ["teacher", "standard", "at"]


def test_substitute_seed_differs_from_the_teacher_seed():
    cfg = config_from_dict({"seed": 3, "evaluation": {"protocols": ["transfer"]}})
    seeds = dict(models_to_train(cfg))
    assert seeds["substitute"] != seeds["teacher"] == 3
