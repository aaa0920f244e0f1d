"""Evaluation: prediction, white-box and fixed-set scoring, table rows, and the sanity checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mid_core.attacks import default_spec
from mid_core.evaluation import (
    AttackResult,
    SanityWarning,
    accuracy,
    check_gradient_masking,
    check_more_steps_not_better,
    check_perturbation_within_eps,
    check_robust_not_above_clean,
    evaluate_attack,
    predict,
    run_sanity_checks,
    score_fixed_adversarial,
    summarize_row,
)
from mid_core.quantize import to_uint8




class RoundedInput(nn.Module):
    """A gradient-masking 'defence': quantises its input with torch.round, so input gradients are zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 4) / 4)


class FirstPixelClassifier(nn.Module):
    """Predicts class 1 when the first pixel is above 0.5, else class 0 (a model with known predictions)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale * (x.flatten(1)[:, 0] - 0.5)
        return torch.stack([-s, s], dim=1)


# ---------------------------------------------------------------- predict / accuracy


def test_predict_and_accuracy_match_a_model_with_known_predictions():
    x = torch.zeros(5, 1, 2, 2)
    x[[1, 3], 0, 0, 0] = 0.9
    model = FirstPixelClassifier()
    assert predict(model, x, batch_size=2).tolist() == [0, 1, 0, 1, 0]
    assert accuracy(model, x, torch.tensor([0, 1, 1, 1, 1]), batch_size=2) == pytest.approx(3 / 5)


def test_predict_restores_training_mode_and_builds_no_graph():
    model = FirstPixelClassifier().train()
    out = predict(model, torch.rand(3, 1, 2, 2))
    assert model.training and not out.requires_grad and out.dtype == torch.int64


def test_predict_accepts_uint8_images(trained):
    model, x, _ = trained
    assert torch.equal(predict(model, to_uint8(x)), predict(model, x))


def test_predictions_do_not_depend_on_batch_size(trained):
    model, x, _ = trained
    assert torch.equal(predict(model, x, batch_size=5), predict(model, x, batch_size=256))


def test_accuracy_of_an_empty_set_is_an_error():
    with pytest.raises(ValueError):
        accuracy(FirstPixelClassifier(), torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))


# ---------------------------------------------------------------- white-box and fixed-set scoring


def test_evaluate_attack_scores_its_own_adversarial_images(trained):
    model, x, y = trained
    spec = default_spec("PGD_N", eps=0.1, steps=5, step_size=0.03)
    result, adv = evaluate_attack(spec, model, x, y, batch_size=10)
    assert isinstance(result, AttackResult) and result.name == "PGD_N" and result.num_images == len(y)
    assert result.accuracy == pytest.approx(score_fixed_adversarial(model, adv, y, batch_size=7))
    assert result.clean_accuracy == pytest.approx(accuracy(model, x, y))
    assert result.accuracy <= result.clean_accuracy
    assert result.max_linf <= 0.1 + 1e-6
    assert adv.shape == x.shape


def test_success_rate_counts_flipped_correct_predictions(trained):
    model, x, y = trained
    result, adv = evaluate_attack(default_spec("FGSM_N", eps=0.1), model, x, y)
    clean_ok = predict(model, x) == y
    adv_ok = predict(model, adv) == y
    assert result.success_rate == pytest.approx(float((clean_ok & ~adv_ok).sum() / clean_ok.sum()))
    assert result.target_hit_rate is None


def test_targeted_evaluation_reports_how_often_targets_are_hit(trained):
    model, x, y = trained
    result, _ = evaluate_attack(default_spec("PGD_T", steps=20, step_size=0.03), model, x, y)
    assert result.target_hit_rate is not None and result.target_hit_rate >= 0.5


def test_evaluation_is_deterministic_and_independent_of_batch_size(trained):
    model, x, y = trained
    spec = default_spec("BIM_T", eps=0.1, steps=5, step_size=0.03)  # deterministic apart from the targets
    r1, a1 = evaluate_attack(spec, model, x, y, batch_size=32, seed=3)
    r2, a2 = evaluate_attack(spec, model, x, y, batch_size=9, seed=3)
    assert torch.allclose(a1, a2, atol=1e-6) and r1.accuracy == r2.accuracy
    r3, a3 = evaluate_attack(default_spec("PGD_N", eps=0.1, steps=3, step_size=0.03), model, x, y, seed=3)
    r4, a4 = evaluate_attack(default_spec("PGD_N", eps=0.1, steps=3, step_size=0.03), model, x, y, seed=3)
    assert torch.equal(a3, a4)


def test_progress_callback_reaches_the_total(trained):
    model, x, y = trained
    calls = []
    evaluate_attack(default_spec("FGSM_N"), model, x, y, batch_size=10, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(10, 32), (20, 32), (30, 32), (32, 32)]


def test_quantized_evaluation_scores_8bit_images_inside_eps(trained):
    model, x, y = trained
    _, adv = evaluate_attack(default_spec("PGD_N", steps=5, step_size=0.1), model, x, y, quantize=True)
    assert torch.equal(torch.round(adv * 255) / 255, adv)
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6


def test_score_fixed_adversarial_accepts_stored_uint8_images(trained):
    model, x, y = trained
    assert score_fixed_adversarial(model, to_uint8(x), y, 8) == pytest.approx(accuracy(model, x, y))


# ---------------------------------------------------------------- table rows


def test_both_means_follow_the_paper_definitions():
    # Table 2, CIFAR-10, MID row: the paper's Avg. 59.25 is the mean over all 13 columns, benign included; its
    # MNIST and Fashion-MNIST MID rows average the 12 attack columns only.
    values = [64.48, 69.88, 66.47, 68.08, 45.12, 41.63, 45.09, 62.24, 59.39, 64.42, 64.48, 53.29, 65.70]
    columns = ["benign", "PGD_N", "PGD_T", "MIM_N", "MIM_T", "FGSM_N", "FGSM_T", "BIM_N", "BIM_T", "CW_N", "CW_T",
               "AA_N", "JSMA_T"]
    row = summarize_row(dict(zip(columns, values)))
    assert row["mean_with_benign"] == pytest.approx(59.25, abs=0.005)
    assert row["mean_attacks"] == pytest.approx(sum(values[1:]) / 12)
    assert row["worst_case"] == pytest.approx(41.63)


def test_worst_case_ignores_benign_and_columns_keep_paper_order():
    row = summarize_row({"AA_N": 0.5, "benign": 0.1, "PGD_N": 0.7})
    assert list(row)[:3] == ["benign", "PGD_N", "AA_N"]
    assert row["worst_case"] == 0.5
    assert row["mean_with_benign"] == pytest.approx((0.1 + 0.7 + 0.5) / 3)
    assert row["mean_attacks"] == pytest.approx(0.6)


def test_row_without_attacks_or_with_reserved_keys_is_rejected():
    with pytest.raises(ValueError):
        summarize_row({"benign": 0.9})
    with pytest.raises(ValueError):
        summarize_row({"PGD_N": 0.5, "mean_attacks": 0.1})


# ---------------------------------------------------------------- sanity checks


def test_robust_above_clean_is_flagged():
    msgs = check_robust_not_above_clean(0.9, {"PGD_N": 0.95, "MIM_N": 0.4})
    assert len(msgs) == 1 and "PGD_N" in msgs[0]


def test_robust_at_or_below_clean_is_not_flagged():
    assert check_robust_not_above_clean(0.9, {"PGD_N": 0.9, "MIM_N": 0.1}) == []


def test_perturbation_beyond_eps_is_flagged_and_inside_is_not():
    clean = torch.full((4, 1, 3, 3), 0.5)
    ok = clean + 0.3
    assert check_perturbation_within_eps(clean, ok, 0.3) == []
    bad = ok.clone()
    bad[2, 0, 1, 1] = 0.5 + 0.32
    msgs = check_perturbation_within_eps(clean, bad, 0.3, name="PGD_N")
    assert len(msgs) == 1 and "1 of 4" in msgs[0] and "PGD_N" in msgs[0]


def test_pixels_outside_unit_range_are_flagged():
    clean = torch.full((2, 1, 3, 3), 0.9)
    assert any("[0, 1]" in m for m in check_perturbation_within_eps(clean, clean + 0.2, 0.3))


def test_real_attack_output_passes_the_eps_check(trained):
    model, x, y = trained
    _, adv = evaluate_attack(default_spec("MIM_N", eps=0.1, steps=5, step_size=0.03), model, x, y)
    assert check_perturbation_within_eps(x, adv, 0.1) == []


def test_gradient_masking_is_flagged_for_a_rounding_model(trained):
    model, x, y = trained
    masked = RoundedInput(model)
    assert accuracy(masked, x, y) >= 0.7  # it still classifies; only its gradients are useless
    msgs = check_gradient_masking(masked, x, y, eps=0.3)
    assert any("zero input gradients" in m for m in msgs)


def test_gradient_masking_is_flagged_for_a_model_that_detaches_its_input(trained):
    model, x, y = trained

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, inp):
            return self.inner(inp.detach())

    assert any("no gradient graph" in m for m in check_gradient_masking(Detached(), x, y, eps=0.3))


def test_gradient_masking_is_not_flagged_for_a_normal_model(trained):
    model, x, y = trained
    assert check_gradient_masking(model, x, y, eps=0.3) == []
    assert check_gradient_masking(model, x, y, eps=0.1) == []


def test_more_steps_check_passes_for_pgd_on_a_normal_model(trained):
    model, x, y = trained
    assert check_more_steps_not_better(model, x, y, default_spec("PGD_N", eps=0.1, steps=5, step_size=0.03)) == []


class BandModel(nn.Module):
    """Label 0 is right except in a band of the first pixel, (0.55, 0.65), where class 1 wins.

    The band has no gradient (a step function), and the loss keeps rising with the first pixel through a
    class-2 logit that never wins, so gradient ascent walks through the band and out the other side: a short
    BIM ends inside the band (misclassified), a longer one beyond it (correct again).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1)[:, 0]
        band = torch.where((p > 0.55) & (p < 0.65), 5.0, -5.0)
        return torch.stack([torch.zeros_like(p), band, p - 1.0], dim=1)


def test_more_steps_check_flags_an_attack_that_gets_weaker_with_more_steps():
    x, y = torch.full((4, 1, 2, 2), 0.5), torch.zeros(4, dtype=torch.long)
    spec = default_spec("BIM_N", eps=0.3, steps=4, step_size=0.03)  # 0.5 -> 0.62 (wrong); 8 steps -> 0.74 (right)
    msgs = check_more_steps_not_better(BandModel(), x, y, spec, num_classes=3)
    assert len(msgs) == 1 and "BIM_N" in msgs[0] and "4 -> 8" in msgs[0]


def test_more_steps_check_does_not_apply_to_one_step_attacks(trained):
    model, x, y = trained
    assert check_more_steps_not_better(model, x, y, default_spec("FGSM_N")) == []


def test_run_sanity_checks_warns_once_per_problem(trained):
    model, x, y = trained
    bad = (x + 0.5).clamp(0, 1)
    with pytest.warns(SanityWarning) as record:
        msgs = run_sanity_checks(clean_accuracy=0.5, robust={"PGD_N": 0.6}, clean_images=x,
                                 adversarial={"PGD_N": bad}, specs={"PGD_N": default_spec("PGD_N")},
                                 model=RoundedInput(model), images=x, labels=y, masking_eps=0.3)
    assert len(record) == len(msgs) >= 3
    joined = " ".join(msgs)
    assert "robust_above_clean" in joined and "perturbation" in joined and "gradient_masking" in joined


def test_run_sanity_checks_is_quiet_for_a_sound_evaluation(trained, recwarn):
    model, x, y = trained
    spec = default_spec("PGD_N", eps=0.1, steps=5, step_size=0.03)
    result, adv = evaluate_attack(spec, model, x, y)
    msgs = run_sanity_checks(clean_accuracy=result.clean_accuracy, robust={"PGD_N": result.accuracy},
                             clean_images=x, adversarial={"PGD_N": adv}, specs={"PGD_N": spec},
                             model=model, images=x, labels=y, masking_eps=0.1, more_steps_specs=[spec])
    assert msgs == []
    assert not [w for w in recwarn if issubclass(w.category, SanityWarning)]
