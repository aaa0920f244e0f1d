"""The white-box verdict's optional black-box stage (evaluation.verdict_square_queries): a longer Square on the
images that survive every white-box attack, so gradient masking cannot keep points robust."""
from __future__ import annotations

from pathlib import Path

import pytest
from pipeline.config import ConfigError, load_config
from pipeline.stages.evaluate import whitebox_verdict
from pipeline.stages.tables import write_tables

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"


def _cfg(*overrides: str):
    return load_config(TINY, ["evaluation.verdict_pgd_restarts=1", "evaluation.verdict_pgd_steps=3",
                              "evaluation.verdict_pgd_step_size=0.01", *overrides], check_data=False)


def test_square_stage_breaks_what_every_gradient_attack_left_robust(masked_case):
    model, images, labels = masked_case
    verdict = whitebox_verdict(_cfg("evaluation.verdict_square_queries=3000"), model, images, labels,
                               {"benign": 1.0}, {})
    assert verdict["per_sample_worst_case"] == 1.0  # PGD-3 with a tiny step: rounding hides every point
    assert verdict["worst_case_with_square"] < verdict["per_sample_worst_case"]
    assert verdict["square_queries"] == 3000 and verdict["square_restarts"] == 1


def test_verdict_has_no_square_fields_when_the_stage_is_off(masked_case):
    model, images, labels = masked_case
    verdict = whitebox_verdict(_cfg(), model, images, labels, {"benign": 1.0}, {})
    assert not {"square_queries", "worst_case_with_square"} & set(verdict)


def test_table_shows_the_square_column(tmp_path):
    cfg = _cfg("evaluation.verdict_square_queries=3000", "evaluation.attacks=[PGD_N]")
    verdict = {"clean": 1.0, "autoattack": None, "pgd_restarts": 0.5, "pgd_steps": 3, "pgd_step_size": 0.01,
               "restarts": 1, "per_sample_worst_case": 0.5, "images": 24, "square_queries": 3000,
               "square_restarts": 1, "worst_case_with_square": 0.25}
    row = {"protocol": "whitebox", "model": "m", "benign": 1.0, "PGD_N": 0.5, "mean_attacks": 0.5, "mean_with_benign": 0.75, "worst_case": 0.5,
           "verdict": verdict}
    md = write_tables(cfg, [row], tmp_path, 24)["md"].read_text()
    assert "then Square (3000 queries, 1 restart(s))" in md
    assert "| m | 100.00 | n/a | 50.00 | 50.00 | 25.00 |" in md


@pytest.mark.parametrize("overrides, message", [
    (["evaluation.verdict_square_queries=-1"], "verdict_square_queries must be >= 0"),
    (["evaluation.verdict_square_queries=100", "evaluation.verdict_square_restarts=0"], "verdict_square_restarts must be > 0"),
])
def test_bad_square_settings_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(*overrides)


def test_square_without_the_verdict_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="set evaluation.verdict_pgd_restarts >= 1"):
        load_config(TINY, ["evaluation.verdict_square_queries=100"], check_data=False)
