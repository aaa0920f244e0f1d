"""Attack registry: specs, targets, and the behaviour of every attack on a briefly trained tiny model."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mid_core.attacks import (
    ATTACK_KINDS,
    PAPER_COLUMNS,
    AttackSpec,
    default_spec,
    import_advertorch_attacks,
    random_targets,
    run_attack,
)
from mid_core.models import StandardClassifier

REPO = pathlib.Path(__file__).resolve().parents[1]
LINF_COLUMNS = ("PGD_N", "PGD_T", "MIM_N", "MIM_T", "FGSM_N", "FGSM_T", "BIM_N", "BIM_T")

# Cheap versions of every attack kind (few steps / iterations) for behaviour tests.
CHEAP = {
    "PGD_N": dict(eps=0.1, steps=5, step_size=0.03),
    "PGD_T": dict(eps=0.1, steps=5, step_size=0.03),
    "MIM_N": dict(eps=0.1, steps=5, step_size=0.03),
    "MIM_T": dict(eps=0.1, steps=5, step_size=0.03),
    "FGSM_N": dict(eps=0.1),
    "FGSM_T": dict(eps=0.1),
    "BIM_N": dict(eps=0.1, steps=5, step_size=0.03),
    "BIM_T": dict(eps=0.1, steps=5, step_size=0.03),
    "CW_N": dict(cw_max_iterations=10, cw_binary_search_steps=1),
    "CW_T": dict(cw_max_iterations=10, cw_binary_search_steps=1),
    "JSMA_T": dict(jsma_gamma=0.01),
    "AA_N": dict(eps=0.1, autoattack_attacks=("apgd-ce",)),
}




# ---------------------------------------------------------------- the advertorch shim


def test_import_advertorch_attacks_is_idempotent_and_has_the_attack_classes():
    first = import_advertorch_attacks()
    assert import_advertorch_attacks() is first
    for cls in ("LinfPGDAttack", "LinfMomentumIterativeAttack", "GradientSignAttack", "LinfBasicIterativeAttack",
                "CarliniWagnerL2Attack", "JacobianSaliencyMapAttack"):
        assert hasattr(first, cls)


def test_running_attacks_loads_no_ray_mlflow_or_zarr():
    # A fresh interpreter: under pytest zarr is always loaded (it registers a pytest plugin).
    code = (
        "import sys, torch\n"
        "import mid_core.attacks as a, mid_core.evaluation, mid_core.quantize\n"
        "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
        "x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])\n"
        "a.run_attack(a.default_spec('PGD_N', steps=1), m, x, y, num_classes=3)\n"
        "a.run_attack(a.default_spec('AA_N', autoattack_attacks=('apgd-ce',)), m, x, y, num_classes=3)\n"
        "print(sorted(k for k in %r if k in sys.modules))\n" % (("ray", "mlflow", "zarr"),)
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("name", PAPER_COLUMNS)
def test_every_paper_column_has_a_default_spec_of_the_right_kind(name):
    spec = default_spec(name)
    prefix, suffix = name.split("_")
    assert spec.name == name
    assert spec.targeted is (suffix == "T")
    assert spec.kind in ATTACK_KINDS
    assert spec.kind == {"AA": "autoattack"}.get(prefix, prefix.lower())


def test_default_specs_follow_the_paper_and_official_code():
    pgd, mim, bim, fgsm = (default_spec(n) for n in ("PGD_N", "MIM_T", "BIM_N", "FGSM_T"))
    assert (pgd.eps, pgd.steps, pgd.step_size, pgd.rand_init) == (0.3, 40, 0.01, True)
    assert (mim.eps, mim.steps, mim.step_size, mim.decay) == (0.3, 40, 0.01, 1.0)
    assert (bim.eps, bim.steps, bim.step_size) == (0.3, 40, 0.05)
    assert (fgsm.eps, fgsm.steps, fgsm.step_size) == (0.3, 1, 0.3)
    assert default_spec("AA_N").autoattack_version == "standard"
    assert default_spec("CW_N").linf_eps is None and default_spec("JSMA_T").linf_eps is None


def test_fgsm_step_follows_overridden_eps():
    spec = default_spec("FGSM_N", eps=0.2)
    assert (spec.steps, spec.step_size) == (1, 0.2)


@pytest.mark.parametrize("name", PAPER_COLUMNS)
def test_spec_dict_round_trips_through_json_and_names_library_and_class(name):
    spec = default_spec(name)
    d = json.loads(json.dumps(spec.to_dict()))
    assert AttackSpec.from_dict(d) == spec
    assert d["library"] == ("autoattack" if name == "AA_N" else "advertorch")
    assert d["attack_class"].split(".")[-1] in ("AutoAttack", "LinfPGDAttack", "LinfMomentumIterativeAttack",
                                                "GradientSignAttack", "LinfBasicIterativeAttack",
                                                "CarliniWagnerL2Attack", "JacobianSaliencyMapAttack")
    assert (d["target_rule"] is not None) == spec.targeted


def test_custom_autoattack_subset_round_trips():
    spec = default_spec("AA_N", autoattack_attacks=("apgd-ce", "square"))
    assert spec.autoattack_version == "custom"
    assert AttackSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_jsma_n_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="JSMA.*targeted"):
        default_spec("JSMA_N")


def test_aa_t_is_rejected():
    with pytest.raises(ValueError, match="AA_T"):
        default_spec("AA_T")


@pytest.mark.parametrize("bad", ["PGD", "XYZ_N", "PGD_X", "pgd_n", "PGD_N_T", ""])
def test_unknown_name_lists_valid_names(bad):
    with pytest.raises(ValueError, match="PGD_N.*JSMA_T"):
        default_spec(bad)


@pytest.mark.parametrize("override", [dict(eps=0.0), dict(eps=1.5), dict(eps=-0.1), dict(steps=0),
                                      dict(steps=-3), dict(step_size=0.0), dict(step_size=-0.01)])
def test_invalid_overrides_are_rejected(override):
    with pytest.raises(ValueError):
        default_spec("PGD_N", **override)


def test_unknown_or_identity_overrides_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        default_spec("PGD_N", epsilon=0.1)
    with pytest.raises(ValueError, match="targeted"):
        default_spec("PGD_N", targeted=True)


def test_restarts_are_only_for_pgd():
    with pytest.raises(ValueError, match="restarts"):
        default_spec("MIM_N", restarts=2)


# ---------------------------------------------------------------- random targets


def test_random_targets_never_equal_labels_and_cover_the_other_classes():
    labels = torch.arange(10).repeat(500)
    targets = random_targets(labels, 10, torch.Generator().manual_seed(0))
    assert targets.dtype == torch.int64 and targets.shape == labels.shape
    assert not bool((targets == labels).any())
    assert int(targets.min()) >= 0 and int(targets.max()) <= 9
    for c in range(10):  # each label's targets spread over all 9 other classes, roughly uniformly
        counts = torch.bincount(targets[labels == c], minlength=10)
        assert counts[c] == 0
        others = counts[torch.arange(10) != c].float()
        assert bool((others > 500 / 9 * 0.4).all())


def test_random_targets_are_reproducible_from_the_generator():
    labels = torch.randint(0, 10, (100,))
    a = random_targets(labels, 10, torch.Generator().manual_seed(3))
    b = random_targets(labels, 10, torch.Generator().manual_seed(3))
    c = random_targets(labels, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- running attacks


@pytest.mark.parametrize("name", LINF_COLUMNS)
def test_linf_attacks_stay_in_the_eps_ball_and_in_unit_range(trained, name):
    model, x, y = trained
    spec = default_spec(name, **CHEAP[name])
    adv = run_attack(spec, model, x[:16], y[:16]).adversarial
    assert adv.shape == x[:16].shape and adv.dtype == x.dtype
    assert float((adv - x[:16]).abs().max()) <= spec.eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_default_pgd_at_full_strength_stays_in_the_eps_ball(trained):
    model, x, y = trained
    adv = run_attack(default_spec("PGD_N"), model, x[:16], y[:16]).adversarial
    assert float((adv - x[:16]).abs().max()) <= 0.3 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


@pytest.mark.parametrize("name", ["PGD_T", "MIM_T", "FGSM_T", "BIM_T", "CW_T", "JSMA_T"])
def test_targeted_attacks_return_targets_that_differ_from_labels(trained, name):
    model, x, y = trained
    n = 4 if name == "JSMA_T" else 16
    out = run_attack(default_spec(name, **CHEAP[name]), model, x[:n], y[:n])
    assert out.targets is not None and out.targets.shape == (n,) and out.targets.dtype == torch.int64
    assert not bool((out.targets == y[:n]).any())


@pytest.mark.parametrize("name", ["PGD_N", "MIM_N", "FGSM_N", "BIM_N", "CW_N"])
def test_untargeted_attacks_return_no_targets(trained, name):
    model, x, y = trained
    assert run_attack(default_spec(name, **CHEAP[name]), model, x[:8], y[:8]).targets is None


@pytest.mark.parametrize("name", ["CW_N", "JSMA_T"])
def test_unbounded_attacks_return_valid_images_that_change_something(trained, name):
    model, x, y = trained
    n = 4 if name == "JSMA_T" else 16
    adv = run_attack(default_spec(name, **CHEAP[name]), model, x[:n], y[:n]).adversarial
    assert adv.shape == x[:n].shape
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not torch.equal(adv, x[:n])


def test_jsma_in_cpu_chunks_equals_jsma_on_the_whole_batch(trained):
    """run_attack runs JSMA on chunks of JSMA_CPU_CHUNK images (speed); the images are those of one batch."""
    from mid_core.attacks.run import _build_advertorch, frozen_eval

    model, x, y = trained
    spec = default_spec("JSMA_T", jsma_gamma=0.05)  # 19 saliency steps: some images finish before others
    out = run_attack(spec, model, x[:5], y[:5])  # 5 images: chunks of 2, 2 and 1
    with frozen_eval(model), torch.enable_grad():
        whole = _build_advertorch(spec, model, 10).perturb(x[:5].clone(), out.targets.clone())
    assert torch.equal(out.adversarial, whole.clamp(0, 1))


def test_jsma_runs_in_chunks_on_cpu(trained, monkeypatch):
    from mid_core.attacks import run as registry

    model, x, y = trained
    sizes: list[int] = []
    jsma = import_advertorch_attacks().JacobianSaliencyMapAttack
    original = jsma.perturb
    monkeypatch.setattr(jsma, "perturb", lambda self, a, b: sizes.append(a.shape[0]) or original(self, a, b))
    monkeypatch.setattr(registry, "JSMA_CPU_CHUNK", 2)
    run_attack(default_spec("JSMA_T", **CHEAP["JSMA_T"]), model, x[:5], y[:5])
    assert sizes == [2, 2, 1]


def test_pgd_lowers_the_accuracy_of_a_trained_model(trained):
    model, x, y = trained
    clean = float((model(x).argmax(1) == y).float().mean())
    adv = run_attack(default_spec("PGD_N", eps=0.2, steps=10, step_size=0.05), model, x, y).adversarial
    robust = float((model(adv).argmax(1) == y).float().mean())
    assert clean >= 0.7
    assert robust <= clean - 0.3


def test_targeted_pgd_mostly_reaches_its_targets(trained):
    model, x, y = trained
    out = run_attack(default_spec("PGD_T", steps=20, step_size=0.03), model, x, y)
    assert float((model(out.adversarial).argmax(1) == out.targets).float().mean()) >= 0.5


def test_robust_accuracy_is_not_above_clean_accuracy(trained):
    model, x, y = trained
    clean = float((model(x).argmax(1) == y).float().mean())
    for name in ("PGD_N", "MIM_N", "FGSM_N", "BIM_N"):
        adv = run_attack(default_spec(name, **CHEAP[name]), model, x, y).adversarial
        assert float((model(adv).argmax(1) == y).float().mean()) <= clean


def test_same_seed_gives_identical_results_and_other_seed_differs(trained):
    model, x, y = trained
    spec = default_spec("PGD_T", **CHEAP["PGD_T"])
    a = run_attack(spec, model, x[:8], y[:8], seed=1)
    b = run_attack(spec, model, x[:8], y[:8], seed=1)
    c = run_attack(spec, model, x[:8], y[:8], seed=2)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.adversarial, c.adversarial)


def test_generator_argument_drives_the_randomness(trained):
    model, x, y = trained
    spec = default_spec("PGD_N", **CHEAP["PGD_N"])
    a = run_attack(spec, model, x[:8], y[:8], generator=torch.Generator().manual_seed(7))
    b = run_attack(spec, model, x[:8], y[:8], generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.adversarial, b.adversarial)


def test_attack_leaves_the_global_rng_state_unchanged(trained):
    model, x, y = trained
    before = torch.get_rng_state()
    run_attack(default_spec("PGD_N", **CHEAP["PGD_N"]), model, x[:4], y[:4], seed=5)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", ["PGD_N", "PGD_T", "MIM_N", "FGSM_T", "BIM_N", "CW_T", "JSMA_T", "AA_N"])
def test_no_gradient_reaches_the_parameters_and_modes_are_restored(name):
    torch.manual_seed(0)
    model = StandardClassifier.from_backbone("lenet_tiny").train()
    model.classifier.eval()  # a mixed-mode model must come back exactly as it was
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    run_attack(default_spec(name, **CHEAP[name]), model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert model.training and model.encoder.training and not model.classifier.training


def test_attacks_work_inside_a_no_grad_block(trained):
    model, x, y = trained
    with torch.no_grad():
        adv = run_attack(default_spec("PGD_N", **CHEAP["PGD_N"]), model, x[:8], y[:8]).adversarial
    assert not torch.equal(adv, x[:8])


def test_more_pgd_restarts_never_weaken_the_attack(trained):
    model, x, y = trained
    one = run_attack(default_spec("PGD_N", eps=0.1, steps=3, step_size=0.03), model, x, y, seed=0)
    three = run_attack(default_spec("PGD_N", eps=0.1, steps=3, step_size=0.03, restarts=3), model, x, y, seed=0)
    with torch.no_grad():
        loss1 = F.cross_entropy(model(one.adversarial), y, reduction="none")
        loss3 = F.cross_entropy(model(three.adversarial), y, reduction="none")
        wrong1 = model(one.adversarial).argmax(1) != y
        wrong3 = model(three.adversarial).argmax(1) != y
    assert bool((wrong3 | ~wrong1).all())  # a sample fooled with one restart stays fooled
    assert bool(((loss3 >= loss1 - 1e-6) | (wrong3 & ~wrong1)).all())
    assert float((model(three.adversarial).argmax(1) == y).float().mean()) <= \
        float((model(one.adversarial).argmax(1) == y).float().mean())


def test_autoattack_standard_runs_on_16_images(trained):
    model, x, y = trained
    adv = run_attack(default_spec("AA_N"), model, x[:16], y[:16]).adversarial
    assert float((adv - x[:16]).abs().max()) <= 0.3 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    clean = float((model(x[:16]).argmax(1) == y[:16]).float().mean())
    assert float((model(adv).argmax(1) == y[:16]).float().mean()) <= clean


def test_autoattack_subset_keeps_the_eps_ball_and_lowers_accuracy(trained):
    model, x, y = trained
    spec = default_spec("AA_N", **CHEAP["AA_N"])
    adv = run_attack(spec, model, x[:16], y[:16]).adversarial
    assert float((adv - x[:16]).abs().max()) <= spec.eps + 1e-6
    clean = float((model(x[:16]).argmax(1) == y[:16]).float().mean())
    assert float((model(adv).argmax(1) == y[:16]).float().mean()) < clean


def test_bad_inputs_are_rejected(trained):
    model, x, y = trained
    spec = default_spec("FGSM_N")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_attack(spec, model, x[:2] * 2 - 0.5, y[:2])
    with pytest.raises(ValueError, match="labels"):
        run_attack(spec, model, x[:2], y[:3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["PGD_T", "MIM_N", "FGSM_N", "BIM_T", "CW_N", "JSMA_T", "AA_N"])
def test_attacks_run_on_cuda_tensors(trained, name):
    model, x, y = trained
    model_cuda = StandardClassifier.from_backbone("lenet_tiny").cuda()
    model_cuda.load_state_dict(model.state_dict())
    n = 4 if name == "JSMA_T" else 16
    out = run_attack(default_spec(name, **CHEAP[name]), model_cuda, x[:n].cuda(), y[:n].cuda())
    assert out.adversarial.is_cuda
    assert out.targets is None or out.targets.is_cuda
    spec = default_spec(name, **CHEAP[name])
    if spec.linf_eps is not None:
        assert float((out.adversarial - x[:n].cuda()).abs().max()) <= spec.eps + 1e-6
