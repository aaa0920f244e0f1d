"""White-box threat models beyond L-inf: the AAL2_N, APGDL1_N, DDN_N, FAB_N and STADV_N columns (specs, budgets,
outputs), the per-norm worst cases and their union, and the white-box row / verdict / config around them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mid_core.attacks import WHITEBOX_ONLY_COLUMNS, AttackSpec, default_spec, perturbation_size, run_attack
from mid_core.evaluation import (budgeted_outcomes, check_perturbation_within_eps, predict, run_sanity_checks,
                                 threat_model_summary)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"

# Cheaper settings with the same threat model (norm, eps) as each column's default.
CHEAP = {
    "AAL2_N": dict(autoattack_attacks=("apgd-ce",)),
    "APGDL1_N": {},
    "DDN_N": dict(steps=50),
    "FAB_N": {},
}
EXPECTED_NORM = {"AAL2_N": ("l2", 1.5), "APGDL1_N": ("l1", 12.0), "DDN_N": ("l2", 1.5), "FAB_N": ("linf", 0.3),
                 "STADV_N": ("spatial", None)}


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels).float().mean())


# ---- specs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WHITEBOX_ONLY_COLUMNS)
def test_each_column_records_its_norm_and_budget_and_round_trips(name):
    spec = default_spec(name)
    norm, budget = EXPECTED_NORM[name]
    assert spec.norm == norm and spec.budget_eps == budget and not spec.targeted
    assert spec.linf_eps == (budget if norm == "linf" else None)
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["norm"] == norm
    assert AttackSpec.from_dict(d) == spec


def test_old_store_records_still_load_and_paper_records_are_unchanged():
    old_pgd = {"name": "PGD_N", "kind": "pgd", "targeted": False, "eps": 0.3, "norm": "linf", "steps": 40,
               "step_size": 0.01, "decay": 1.0, "rand_init": True, "restarts": 1, "cw_confidence": 1.0,
               "cw_max_iterations": 500, "cw_learning_rate": 0.01, "cw_binary_search_steps": 4,
               "cw_initial_const": 1.0, "jsma_theta": 1.0, "jsma_gamma": 1.0, "autoattack_version": "standard",
               "autoattack_attacks": None, "library": "advertorch", "attack_class": "advertorch.attacks.LinfPGDAttack",
               "linf_eps": 0.3, "target_rule": None}
    assert AttackSpec.from_dict(old_pgd) == default_spec("PGD_N")
    assert default_spec("PGD_N").to_dict() == old_pgd  # a store made before records the same spec now
    old_aa = {**old_pgd, "name": "AA_N", "kind": "autoattack", "rand_init": False, "library": "autoattack",
              "attack_class": "pyautoattack.AutoAttack"}
    assert AttackSpec.from_dict(old_aa).linf_eps == 0.3
    minimal_cw = {"name": "CW_N", "kind": "cw", "targeted": False}  # keys added later take their defaults
    assert AttackSpec.from_dict(minimal_cw).norm == "l2" and AttackSpec.from_dict(minimal_cw).budget_eps is None


@pytest.mark.parametrize("name, overrides, message", [
    ("DDN_N", dict(eps=0.0), "L2 radius of DDN_N.*> 0"),
    ("AAL2_N", dict(eps=float("inf")), "finite number > 0"),
    ("APGDL1_N", dict(eps=-1.0), "L1 radius"),
    ("PGD_N", dict(eps=1.5), r"eps must be in \(0, 1\]"),
    ("FAB_N", dict(eps=2.0), r"eps must be in \(0, 1\]"),
    ("AAL2_N", dict(norm="l1"), "fixes the norm"),
    ("DDN_T", {}, "untargeted only.*DDN_N"),
    ("AAL2", {}, "valid names.*AAL2_N"),
])
def test_bad_names_and_budgets_fail_with_the_fix(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        default_spec(name, **overrides)


def test_norms_outside_the_attacks_threat_model_are_refused():
    with pytest.raises(ValueError, match="only L-inf is supported for pgd"):
        AttackSpec(name="x", kind="pgd", targeted=False, norm="l2")
    with pytest.raises(ValueError, match="AutoAttack's norm must be one of"):
        AttackSpec(name="x", kind="autoattack", targeted=False, norm="l0")


def test_l2_radius_beyond_one_is_valid():
    assert default_spec("AAL2_N", eps=3.0).budget_eps == 3.0


# ---- attacks -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CHEAP))
def test_outputs_stay_in_their_norm_budget_and_unit_range_and_never_beat_clean(trained, name):
    model, x, y = trained
    x, y = x[:8], y[:8]
    spec = default_spec(name, **CHEAP[name])
    adv = run_attack(spec, model, x, y, seed=1).adversarial
    assert adv.shape == x.shape and bool(torch.isfinite(adv).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float(perturbation_size(adv - x, spec.norm).max()) <= spec.budget_eps * (1 + 1e-5)
    assert check_perturbation_within_eps(x, adv, spec.budget_eps, name=name, norm=spec.norm) == []
    assert _accuracy(model, adv, y) <= _accuracy(model, x, y)


def test_stadv_returns_valid_images_and_never_beats_clean(trained):
    model, x, y = trained
    x, y = x[:8], y[:8]
    adv = run_attack(default_spec("STADV_N", steps=20), model, x, y).adversarial
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert _accuracy(model, adv, y) <= _accuracy(model, x, y)


def test_ddn_is_judged_at_its_budget(trained):
    """An image keeps DDN's adversarial only if it lies within eps (L2); else it gets its clean image back."""
    model, x, y = trained
    x, y = x[:8], y[:8]
    free = run_attack(default_spec("DDN_N", eps=50.0, steps=50), model, x, y).adversarial
    small = 0.6
    judged = run_attack(default_spec("DDN_N", eps=small, steps=50), model, x, y).adversarial
    needs = perturbation_size(free - x, "l2")
    within = needs <= small
    assert torch.equal(judged[within], free[within])
    assert torch.equal(judged[~within], x[~within])
    assert bool((~within).any())  # the case is not vacuous


def test_the_l2_budget_check_flags_a_perturbation_beyond_eps():
    clean = torch.full((2, 1, 4, 4), 0.5)
    adv = clean.clone()
    adv[1] += 0.2  # L2 norm 0.8
    assert check_perturbation_within_eps(clean, adv, 1.0, norm="l2") == []
    assert len(check_perturbation_within_eps(clean, adv, 0.5, norm="l2")) == 1
    assert len(check_perturbation_within_eps(clean, adv, 3.0, norm="l1")) == 1  # L1 norm 3.2
    msgs = run_sanity_checks(clean_images=clean, adversarial={"AAL2_N": adv},
                             specs={"AAL2_N": default_spec("AAL2_N", eps=0.5)}, warn=False)
    assert len(msgs) == 1 and "AAL2_N" in msgs[0]


class _RandomConvNet(nn.Module):
    """An untrained conv net on (N, 1, 28, 28) images: 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_an_undefended_random_model_falls_to_l2_autoattack_at_a_large_eps():
    torch.manual_seed(0)
    model = _RandomConvNet().eval()
    x = torch.rand(8, 1, 28, 28)
    y = predict(model, x)  # its own predictions: 100% clean accuracy
    spec = default_spec("AAL2_N", eps=5.0, autoattack_attacks=("apgd-ce", "apgd-t"))
    adv = run_attack(spec, model, x, y).adversarial
    assert _accuracy(model, adv, y) <= 0.25
    assert float(perturbation_size(adv - x, "l2").max()) <= 5.0 * (1 + 1e-5)


# ---- union and per-norm worst cases ------------------------------------------------------------------------------


def test_union_is_the_per_image_and_of_every_norm():
    t, f = True, False
    clean = torch.tensor([t, t, t, t, t, f])
    correct = {"PGD_N": torch.tensor([t, t, f, t, t, t]), "AA_N": torch.tensor([t, t, t, t, f, t]),
               "AAL2_N": torch.tensor([t, f, t, t, t, t]), "APGDL1_N": torch.tensor([t, t, t, f, t, t])}
    norms = {"PGD_N": "linf", "AA_N": "linf", "AAL2_N": "l2", "APGDL1_N": "l1"}
    s = threat_model_summary(clean, correct, norms)
    assert s["worst_linf"] == pytest.approx(3 / 6)  # images 0, 1, 3
    assert s["worst_l2"] == pytest.approx(4 / 6)
    assert s["worst_l1"] == pytest.approx(4 / 6)
    assert s["union"] == pytest.approx(1 / 6)  # image 0 only
    assert s["union"] <= min(s["worst_linf"], s["worst_l2"], s["worst_l1"])
    assert set(s["union_over"]) == set(correct) and s["worst_l2_over"] == ["AAL2_N"]
    only_linf = threat_model_summary(clean, {"PGD_N": correct["PGD_N"]}, norms)
    assert only_linf["worst_l2"] is None and only_linf["union"] == only_linf["worst_linf"]
    assert threat_model_summary(clean, {}, {})["union"] is None


def test_union_of_real_attacks_is_below_every_column_and_clean(trained):
    model, x, y = trained
    x, y = x[:8], y[:8]
    specs = {"FGSM_N": default_spec("FGSM_N", eps=0.1), "DDN_N": default_spec("DDN_N", steps=30, eps=1.0),
             "AAL2_N": default_spec("AAL2_N", eps=1.0, autoattack_attacks=("apgd-ce",)),
             "STADV_N": default_spec("STADV_N", steps=5)}
    adversarial = {n: run_attack(s, model, x, y).adversarial for n, s in specs.items()}
    outcomes = budgeted_outcomes(model, y, adversarial, specs)
    assert set(outcomes) == {"FGSM_N", "DDN_N", "AAL2_N"}  # stAdv has no budget
    s = threat_model_summary(predict(model, x) == y, outcomes, {n: specs[n].norm for n in outcomes})
    for name in outcomes:
        assert s["union"] <= _accuracy(model, adversarial[name], y) + 1e-9
    assert s["union"] <= min(s["worst_linf"], s["worst_l2"]) <= _accuracy(model, x, y)


# ---- pipeline: config, white-box row, verdict, metrics -----------------------------------------------------------


def test_whitebox_only_columns_with_a_fixed_store_protocol_are_refused_with_the_fix():
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"white-box only.*evaluation.protocols: \[whitebox\]"):
        load_config(TINY, ["evaluation.attacks=[PGD_N, AAL2_N]", "evaluation.protocols=[paper, whitebox]"],
                    check_data=False)
    cfg = load_config(TINY, ["evaluation.attacks=[PGD_N, AAL2_N]", "evaluation.protocols=[whitebox]",
                             "evaluation.eps_l2=2.5"], check_data=False)
    assert cfg.evaluation.eps_l2 == 2.5


def test_whitebox_row_reports_per_norm_worst_cases_union_and_verdict(trained, tmp_path):
    from pipeline.config import load_config
    from pipeline.stages.evaluate import whitebox_rows
    from pipeline.stages.tables import write_tables
    from pipeline.tracking import model_metrics

    model, x, y = trained
    x, y = x[:8], y[:8]
    cfg = load_config(TINY, ["evaluation.attacks=[FGSM_N, DDN_N, AAL2_N]", "evaluation.protocols=[whitebox]",
                             "evaluation.eps_l2=4.0", "evaluation.verdict_pgd_restarts=1",
                             "evaluation.verdict_pgd_steps=3"], check_data=False)
    (row,) = whitebox_rows(cfg, {"m": model}, x, y, slow_n=8)
    assert row["union_over"] == ["FGSM_N", "DDN_N", "AAL2_N"] and row["worst_l1"] is None
    assert row["union"] <= min(row["worst_linf"], row["worst_l2"]) <= row["benign"]
    for name in ("FGSM_N", "DDN_N", "AAL2_N"):
        assert row["union"] <= row[name] + 1e-9
    verdict = row["verdict"]
    assert verdict["union"] <= min(verdict["per_sample_worst_case"], row["union"]) + 1e-9
    metrics = model_metrics([row], ["benign", "FGSM_N", "DDN_N", "AAL2_N"])["m"]
    assert metrics["robust_acc/whitebox/union"] == row["union"]
    assert metrics["robust_acc/whitebox/worst_l2"] == row["worst_l2"]
    assert "robust_acc/whitebox/worst_l1" not in metrics
    assert metrics["robust_acc/whitebox/verdict_union"] == verdict["union"]
    files = write_tables(cfg, [row], tmp_path, 8)
    saved = json.loads(files["json"].read_text())["rows"][0]
    assert saved["union"] == row["union"] and math.isclose(saved["worst_l2"], row["worst_l2"])
