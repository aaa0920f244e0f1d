"""Properties of MID's losses and meta step: the three bugs of the official release must be absent."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mid_core.losses import LossWeights, adversarial_consistency, cyclic_consistency, feature_log_probs
from mid_core.meta_step import BENIGN, MetaConfig, _domain_losses, apply_grads, draw_held_out, meta_step
from mid_core.models import Teacher, classifier_student_from_teacher, student_from_teacher


def make_batch(n: int = 6, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g, dtype=dtype)
    views = {BENIGN: x}
    for i, name in enumerate(["PGD_N", "MIM_N", "PGD_T"]):
        views[name] = (x + 0.3 * (2 * torch.rand(x.shape, generator=g, dtype=dtype) - 1)).clamp(0, 1)
    labels = torch.randint(0, 10, (n,), generator=g)
    return views, labels


def make_models(dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    teacher = Teacher.from_backbone("lenet_tiny").to(dtype).freeze()
    student = student_from_teacher(teacher, init="random").to(dtype)
    return teacher, student


def test_meta_test_term_changes_student_gradient():
    teacher, student = make_models()
    views, labels = make_batch()
    with_test = meta_step(student, teacher, views, labels, "PGD_N", MetaConfig(meta_test_weight=1.0))
    without_test = meta_step(student, teacher, views, labels, "PGD_N", MetaConfig(meta_test_weight=0.0))
    diff = sum(float((with_test.grads[k] - without_test.grads[k]).abs().sum()) for k in with_test.grads)
    assert diff > 1e-6, "the meta-test loss does not reach the student's gradient"


def _meta_objective(student, teacher, views, labels, held_out, cfg, params):
    """L_train(θ) + β L_test(θ − α ∇L_train(θ)) written out independently with autograd."""
    buffers = dict(student.named_buffers())
    with torch.no_grad():
        t = feature_log_probs(teacher.encoder(views[BENIGN]))
    train = [views[d] for d in sorted(views) if d != held_out]
    l_train, _ = _domain_losses(student, params, buffers, teacher, t, train, labels, cfg.train_weights, 1.0)
    grads = torch.autograd.grad(l_train, list(params.values()), create_graph=True)
    fast = {k: p - cfg.inner_lr * g for (k, p), g in zip(params.items(), grads)}
    l_test, _ = _domain_losses(student, fast, buffers, teacher, t, [views[held_out]], labels, cfg.test_weights, 1.0)
    return l_train + cfg.meta_test_weight * l_test


def test_second_order_gradient_matches_finite_differences():
    teacher, student = make_models(torch.float64)
    views, labels = make_batch(n=4, dtype=torch.float64)
    cfg = MetaConfig(inner_lr=0.5, meta_test_weight=2.0)  # large α so the second-order term is visible
    result = meta_step(student, teacher, views, labels, "MIM_N", cfg)
    params = {k: p.detach().clone() for k, p in student.named_parameters()}
    g = torch.Generator().manual_seed(1)
    h = 1e-6
    for name in ["features.0.weight", "features.3.bias"]:
        flat = params[name].view(-1)
        for idx in torch.randint(0, flat.numel(), (3,), generator=g).tolist():
            values = []
            for sign in (1, -1):
                shifted = {k: v.clone().requires_grad_(True) for k, v in params.items()}
                with torch.no_grad():
                    shifted[name].view(-1)[idx] += sign * h
                values.append(float(_meta_objective(student, teacher, views, labels, "MIM_N", cfg, shifted).detach()))
            numeric = (values[0] - values[1]) / (2 * h)
            analytic = float(result.grads[name].view(-1)[idx])
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-7), (name, idx)


def test_first_order_differs_from_second_order():
    teacher, student = make_models(torch.float64)
    views, labels = make_batch(dtype=torch.float64)
    second = meta_step(student, teacher, views, labels, "PGD_T", MetaConfig(inner_lr=0.5))
    first = meta_step(student, teacher, views, labels, "PGD_T", MetaConfig(inner_lr=0.5, first_order=True))
    diff = sum(float((second.grads[k] - first.grads[k]).abs().sum()) for k in second.grads)
    assert diff > 1e-9


def test_held_out_domain_is_excluded_from_meta_train_loss():
    teacher, student = make_models()
    views, labels = make_batch()
    before = meta_step(student, teacher, views, labels, "MIM_N", MetaConfig())
    changed = dict(views, MIM_N=torch.rand_like(views["MIM_N"]))
    after = meta_step(student, teacher, changed, labels, "MIM_N", MetaConfig())
    assert after.metrics["loss_train"] == before.metrics["loss_train"]
    assert after.metrics["loss_test"] != before.metrics["loss_test"]


def test_meta_test_uses_the_held_out_domain():
    teacher, student = make_models()
    views, labels = make_batch()
    a = meta_step(student, teacher, views, labels, "PGD_N", MetaConfig())
    b = meta_step(student, teacher, views, labels, "MIM_N", MetaConfig())
    assert a.metrics["loss_test"] != b.metrics["loss_test"]
    assert a.held_out == "PGD_N" and b.held_out == "MIM_N"


def test_every_loss_is_finite_even_for_extreme_features():
    teacher, student = make_models()
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(50.0)  # saturating softmaxes: the official CC bug produced NaN here
    views, labels = make_batch()
    result = meta_step(student, teacher, views, labels, "PGD_N", MetaConfig())
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    assert all(torch.isfinite(g).all() for g in result.grads.values())


def test_adversarial_consistency_is_zero_when_student_equals_teacher_on_clean_views():
    teacher, _ = make_models()
    student = student_from_teacher(teacher, init="teacher")
    x, _ = make_batch()
    clean = x[BENIGN]
    t = feature_log_probs(teacher.encoder(clean))
    assert float(adversarial_consistency(t, student(clean)).detach().abs().max()) < 1e-6
    views = {BENIGN: clean, "copy": clean.clone()}
    # inner_lr=0 keeps the fast weights equal to θ, so the meta-test AC must vanish too
    result = meta_step(student, teacher, views, torch.zeros(len(clean), dtype=torch.long), "copy", MetaConfig(inner_lr=0.0))
    assert abs(result.metrics["ac_train"]) < 1e-6 and abs(result.metrics["ac_test"]) < 1e-6


def test_kl_terms_are_nonnegative():
    teacher, student = make_models()
    views, _ = make_batch()
    t = feature_log_probs(teacher.encoder(views[BENIGN]))
    z = student(views["PGD_N"])
    assert (adversarial_consistency(t, z) >= -1e-7).all()
    assert (cyclic_consistency(t, z, teacher.encoder, teacher.decoder) >= -1e-7).all()


def test_elementmean_ac_is_the_official_codes_kldivloss():
    # The official code: nn.KLDivLoss()(nn.LogSoftmax()(f_student), nn.Softmax()(f_teacher)), default reduction "mean"
    teacher, student = make_models()
    views, _ = make_batch()
    f_t, z = teacher.encoder(views[BENIGN]), student(views["PGD_N"])
    with pytest.warns(UserWarning, match="batchmean"):  # PyTorch's own warning about reduction="mean"
        official = nn.KLDivLoss()(torch.log_softmax(z, dim=1), torch.softmax(f_t, dim=1))
    ours = adversarial_consistency(feature_log_probs(f_t), z, reduction="elementmean").mean()
    torch.testing.assert_close(ours, official)


def test_elementmean_is_batchmean_over_the_feature_size():
    teacher, student = make_models()
    views, _ = make_batch()
    t = feature_log_probs(teacher.encoder(views[BENIGN]))
    z = student(views["PGD_N"])
    for term in (lambda r: adversarial_consistency(t, z, reduction=r),
                 lambda r: cyclic_consistency(t, z, teacher.encoder, teacher.decoder, reduction=r)):
        torch.testing.assert_close(term("elementmean") * z[0].numel(), term("batchmean"))


def test_meta_step_applies_the_kl_reduction_to_ac_and_cc_only():
    teacher, student = make_models()
    views, labels = make_batch()
    full = meta_step(student, teacher, views, labels, "PGD_N", MetaConfig()).metrics
    mean = meta_step(student, teacher, views, labels, "PGD_N", MetaConfig(kl_reduction="elementmean")).metrics
    size = student(views[BENIGN][:1]).numel()
    assert mean["ac_train"] == pytest.approx(full["ac_train"] / size, rel=1e-5)
    assert mean["cc_train"] == pytest.approx(full["cc_train"] / size, rel=1e-5)
    assert mean["lc_train"] == pytest.approx(full["lc_train"], rel=1e-6)


def test_unknown_kl_reduction_is_refused():
    teacher, student = make_models()
    views, _ = make_batch()
    t = feature_log_probs(teacher.encoder(views[BENIGN]))
    with pytest.raises(ValueError, match="KL reduction must be one of"):
        adversarial_consistency(t, student(views["PGD_N"]), reduction="sum")


def test_cyclic_consistency_gradient_reaches_student_through_frozen_decoder():
    teacher, student = make_models()
    views, labels = make_batch()
    cfg = MetaConfig(use_meta=False, train_weights=LossWeights(ac=0.0, cc=1.0, lc=0.0))
    result = meta_step(student, teacher, views, labels, None, cfg)
    assert all(float(g.abs().sum()) > 0 for g in result.grads.values())
    assert all(p.grad is None for p in teacher.parameters())


def test_frozen_teacher_never_changes():
    teacher, student = make_models()
    before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    views, labels = make_batch()
    for step in range(3):
        result = meta_step(student, teacher, views, labels, draw_held_out(list(views), 0, step), MetaConfig())
        apply_grads(student, result.grads)
        opt.step()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_meta_step_refuses_unfrozen_teacher():
    teacher = Teacher.from_backbone("lenet_tiny")
    student = student_from_teacher(teacher)
    views, labels = make_batch()
    with pytest.raises(ValueError, match="frozen"):
        meta_step(student, teacher, views, labels, "PGD_N", MetaConfig())


def test_meta_step_requires_two_domains():
    teacher, student = make_models()
    views, labels = make_batch()
    with pytest.raises(ValueError, match="two domains"):
        meta_step(student, teacher, {BENIGN: views[BENIGN]}, labels, BENIGN, MetaConfig())


def test_no_meta_ablation_trains_on_every_domain():
    teacher, student = make_models()
    views, labels = make_batch()
    cfg = MetaConfig(use_meta=False)
    base = meta_step(student, teacher, views, labels, None, cfg)
    changed = meta_step(student, teacher, dict(views, MIM_N=torch.rand_like(views["MIM_N"])), labels, None, cfg)
    assert base.metrics["loss_train"] != changed.metrics["loss_train"]
    assert "loss_test" not in base.metrics


def test_held_out_draw_is_uniform_and_identical_across_workers():
    domains = [BENIGN, "PGD_N", "PGD_T", "MIM_N", "MIM_T"]
    draws = [draw_held_out(domains, seed=3, step=s) for s in range(5000)]
    assert draws == [draw_held_out(list(reversed(domains)), seed=3, step=s) for s in range(5000)]
    counts = {d: draws.count(d) for d in domains}
    assert all(800 < c < 1200 for c in counts.values()), counts


class BNEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_batchnorm_running_stats_updated_once_from_meta_train_views():
    torch.manual_seed(0)
    teacher_enc = BNEncoder().eval()
    teacher = Teacher(teacher_enc, nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), nn.Sequential(nn.ConvTranspose2d(4, 1, 5), nn.Sigmoid()))
    views, labels = make_batch()
    teacher.classifier(teacher.encoder(views[BENIGN]))  # materialise the lazy layer
    teacher.freeze()
    student = copy.deepcopy(teacher_enc).train()
    for p in student.parameters():
        p.requires_grad_(True)
    reference = copy.deepcopy(student)
    meta_step(student, teacher, views, labels, "PGD_T", MetaConfig())
    with torch.no_grad():
        reference(torch.cat([views[d] for d in sorted(views) if d != "PGD_T"]))
    assert torch.allclose(student.bn.running_mean, reference.bn.running_mean)
    assert int(student.bn.num_batches_tracked) == 1


def test_without_distillation_gradients_reach_the_students_own_head():
    teacher, _ = make_models()
    student = classifier_student_from_teacher(teacher, init="teacher")
    views, labels = make_batch()
    cfg = MetaConfig(distill=False, train_weights=LossWeights(0.0, 0.0, 1.0), test_weights=LossWeights(0.0, 0.0, 1.0))
    result = meta_step(student, teacher, views, labels, "MIM_N", cfg)
    heads = [n for n in result.grads if n.startswith("classifier.")]
    assert heads and all(float(result.grads[n].abs().sum()) > 0 for n in heads)
    assert any(float(result.grads[n].abs().sum()) > 0 for n in result.grads if n.startswith("encoder."))


def test_erm_loss_is_the_mean_cross_entropy_summed_over_views():
    teacher, _ = make_models()
    student = classifier_student_from_teacher(teacher, init="teacher")
    views, labels = make_batch()
    cfg = MetaConfig(use_meta=False, distill=False, train_weights=LossWeights(0.0, 0.0, 1.0))
    result = meta_step(student, teacher, views, labels, None, cfg)
    with torch.no_grad():
        expected = sum(float(torch.nn.functional.cross_entropy(student(v), labels)) for v in views.values())
    assert result.metrics["loss_train"] == pytest.approx(expected, rel=1e-5)


def test_without_distillation_ac_or_cc_weights_are_refused():
    teacher, _ = make_models()
    student = classifier_student_from_teacher(teacher)
    views, labels = make_batch()
    with pytest.raises(ValueError, match="ac and cc weights"):
        meta_step(student, teacher, views, labels, "MIM_N", MetaConfig(distill=False))
