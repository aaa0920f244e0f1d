"""Experiment configuration: YAML -> typed, validated pydantic models.

What: one ``ExperimentConfig`` (sections ``data``, ``model``, ``teacher``, ``pool``, ``mid``, ``at``, ``evaluation``,
``tracking``) built from a YAML file that may inherit another through ``base:`` and be changed with ``--set
key.sub=value`` overrides (``load_config``), or from a mapping such as a checkpoint's saved config
(``config_from_dict``).

Why: a run takes hours, so every value is checked before any work starts. The models are strict: an unknown key is
an error that suggests the closest valid one, a value of the wrong type is not converted ("3" is not an int, 1 is not
a bool; ints are accepted for floats), numbers must be finite and within the bounds declared on the field. The
checks that involve registries or several fields (data set, backbone and attack names, ``mid.attacks`` within
``pool.attacks``, ``mid.continue_from`` with a static pool, ...) run in ``validate``, and so does the check that the
data root holds the data set. Every problem, pydantic's included, is raised as a one-line ``ConfigError`` that names
the key and says what to change.

The field descriptions are the reference documentation: ``python -m pipeline.config_reference > docs/config.md``
renders them. This module imports no Ray or MLflow, so code that drives ``mid_core`` directly can use it too.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, NoReturn, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from mid_core.datasets import DATASETS, check_data_available
from mid_core.losses import KL_REDUCTIONS
from mid_core.models import BACKBONES


class ConfigError(ValueError):
    """A configuration problem; the message (one line) names the key and how to fix it."""


BASE_MODELS = frozenset({"teacher", "substitute", "standard", "at", "trades"})  # models trained by the teacher stage
VARIANT_NAME = re.compile(r"[a-z][a-z0-9_-]*")
PROTOCOLS = ("paper", "whitebox", "transfer")
ANALYSIS_FIGURES = ("reconstruction", "regeneration", "gradients", "tsne", "sparsity", "attention", "frequency")

def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field(default: Any = None, doc: str = "", *, factory: Any = None, hint: str | None = None, **bounds: Any) -> Any:
    """A field with its reference text ``doc``; ``hint`` is added to an out-of-bounds message (e.g. "0 = off")."""
    extra = {"hint": hint} if hint else None
    if factory is not None:
        return Field(default_factory=factory, description=doc, json_schema_extra=extra, **bounds)
    return Field(default, description=doc, json_schema_extra=extra, **bounds)


class _Section(BaseModel):
    """Shared settings of every section: strict types, unknown keys rejected, finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _partial_subsections(cls, data: Any) -> Any:
        """A subsection states only the keys it changes: the others keep the default this section gives them
        (``mid.test_weights: {cc: 0.5}`` keeps the meta-test ac and lc at 1, not the meta-train 1.5 and 1). A
        subsection written with no keys (``mid:`` alone, parsed as null) means all of its defaults."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            if _is_model(info.annotation) and name in out and (out[name] is None or isinstance(out[name], dict)):
                out[name] = {**info.get_default(call_default_factory=True).model_dump(), **(out[name] or {})}
        return out


class DataConfig(_Section):
    """Which data set to train and test on, and where its files are."""

    dataset: str = _field("digits", "Data set: `digits` (scikit-learn's 8x8 digits, bundled, for quick runs), "
                                    "`mnist` or `fmnist` (Fashion-MNIST).")
    root: str | None = _field(None, "Directory torchvision reads the data set from; null = `$MID_DATA_ROOT`, else "
                                    "`./data`. Checked before any work starts.")
    download: bool = _field(False, "Let torchvision download a missing data set (needs network access); off so a "
                                   "missing data root is reported instead of fetched silently.")
    eps_convention: Literal["paper", "standard"] = _field(
        "paper", "Which L-inf eps the attacks default to (`mid_core.datasets.EPS`): `paper` = 0.3 on every data set as "
                 "the paper writes; `standard` = the community's (0.3 MNIST-like, 8/255 CIFAR-10/100, SVHN, "
                 "Tiny-ImageNet, 4/255 ImageNet). Numbers under the two are not comparable.")
    train_limit: int | None = _field(None, "Use only the first N training images (for iterating quickly; label "
                                           "results accordingly); null = the full training set.", gt=0)


class ModelConfig(_Section):
    """The network architecture shared by the teacher, the MID student and the baselines."""

    backbone: str = _field("lenet5", "Backbone registered in `mid_core.backbones` (each with its image size): "
                                     "`lenet5` (the official code's 32/64 LeNet-5; `lenet5_classic` 6/16), `resnet18` "
                                     "(CIFAR-10), `resnet50` (SVHN), `densenet121` (CIFAR-100), all three with the CIFAR "
                                     "stem; `convnext_b` (Tiny-ImageNet, 64x64), `vit_s` (ImageNet-100) and `vit_b` "
                                     "(ImageNet-1K) at 224x224, without decoder (set `mid.use_cc: false`); `<name>_tiny`: "
                                     "small widths of the same code for tests and CPU runs.")
    pretrained: str | None = _field(None, "Initial weights of the encoder and head from a local torchvision ViT state "
                                          "dict (pretrain, then fine-tune, as the paper's ViTs); null = random init. "
                                          "ViT backbones only.")


class TeacherConfig(_Section):
    """Stage 1: the teacher (encoder, classifier head and reconstruction decoder) and the plain classifiers trained
    alongside it (substitute, standard)."""

    epochs: int = _field(10, "Training epochs of the teacher and of each plain classifier.", gt=0)
    batch_size: int = _field(128, "Images per optimizer step.", gt=0)
    lr: float = _field(1e-3, "Adam learning rate.", gt=0)
    recon_loss: Literal["bce", "l2", "l1"] = _field(
        "bce", "Decoder reconstruction loss. The paper says L1, but L1 and L2 collapsed the MNIST decoders (see "
               "`mid_core.training`), so the default is binary cross-entropy.")
    recon_weight: float = _field(1.0, "Weight of the reconstruction loss next to the classification loss; 0 "
                                      "switches it off (required for backbones without decoder: the ViTs).", ge=0, hint="0 switches the term off")
    substitute_seed_offset: int = _field(1000, "The substitute model (the transfer protocol's attack source) is "
                                               "trained with seed + this offset, so it differs from the teacher.")
    standard_seed_offset: int = _field(2000, "Seed offset of the separate standard classifier (used by "
                                             "`pool.source: standard` and the `standard` evaluation row).")
    num_workers: int = _field(1, "Data-parallel training workers (Ray Train workers in the Ray executor).", gt=0)
    worker_cpus: float = _field(0.5, "CPUs reserved per worker (fractions let several share a core).", gt=0)
    use_gpu: bool = _field(False, "One GPU per worker, gradients all-reduced with NCCL; off = CPU with gloo.")


class PoolConfig(_Section):
    """Stage 2: the adversarial pool, the attack views MID trains on, stored as a Zarr store."""

    source: Literal["teacher", "standard"] = _field(
        "teacher", "The model the pool's attacks are computed against: the teacher (the paper) or the separate "
                   "standard classifier.")
    attacks: list[str] = _field(
        doc="Attacks that make the pool's domains (next to benign): PGD, MIM, FGSM or BIM, suffix `_N` untargeted "
            "or `_T` targeted. The default is the paper's four; CW, JSMA and AA are evaluation-only.",
        factory=lambda: ["PGD_N", "PGD_T", "MIM_N", "MIM_T"])
    eps: float | None = _field(None, "L-inf budget of the pool's attacks, in pixel units of images in [0, 1]; null = "
                                     "the data set's eps under `data.eps_convention` (0.3 on MNIST-like data).",
                               gt=0, le=1, hint="images are in [0, 1]; the paper uses 0.3")
    eps_l2: float | None = _field(None, "L2 budget of `AAL2_N` and `DDN_N` (images in [0, 1]); null = 1.5, a budget "
                                        "for 28x28 MNIST-scale images.", gt=0)
    eps_l1: float | None = _field(None, "L1 budget of `APGDL1_N` (images in [0, 1]); null = 12, a budget for 28x28 "
                                        "MNIST-scale images.", gt=0)
    steps: int | None = _field(None, "Iterations of PGD, MIM and BIM; null = the paper's defaults (40).", gt=0)
    step_size: float | None = _field(None, "Step size of PGD, MIM and BIM; null = the paper's defaults scaled with "
                                           "eps (0.01 and BIM 0.05 at eps 0.3).", gt=0)
    block_size: int = _field(256, "Rows per Zarr chunk, which is also the rows per generation task and the unit "
                                  "training reads.", gt=0)
    num_actors: int = _field(1, "Generation actors running in parallel.", gt=0)
    actor_cpus: float = _field(0.5, "CPUs reserved per generation actor.", gt=0)
    actor_gpus: float = _field(0.0, "GPUs per generation actor (fractions share one GPU); 0 = CPU actors.", ge=0,
                               hint="0 = CPU actors")
    batch_size: int = _field(256, "Images per attack batch inside an actor.", gt=0)
    torch_threads: int = _field(0, "Torch threads per actor; 0 = automatic (machine cores / actors), so actors do "
                                   "not oversubscribe the cores.", ge=0, hint="0 = automatic")
    refresh_every: int = _field(0, "Regenerate the pool against the current deployed model every K MID epochs, so "
                                   "the views follow the student; 0 = a static pool, generated once against "
                                   "`pool.source`.", ge=0, hint="0 = static pool")


class LossWeightsConfig(_Section):
    """Weights of MID's three loss terms in one phase (meta-train or meta-test) of a step."""

    ac: float = _field(1.5, "Adversarial consistency (AC): KL from the teacher's features of the clean image to the student's "
                          "features of the attacked view.", ge=0,
                       hint="0 switches the term off")
    cc: float = _field(0.8, "Cyclic consistency (CC): the same KL after the student's features pass through the frozen "
                          "teacher decoder and encoder.", ge=0,
                       hint="0 switches the term off")
    lc: float = _field(1.0, "Label consistency (LC): cross-entropy of the frozen teacher head on the student's features of "
                          "the attacked view.", ge=0,
                       hint="0 switches the term off")


class MidConfig(_Section):
    """Stage 3: MID meta-training of the student encoder on the pool's domains."""

    epochs: int = _field(5, "Training epochs (passes over the pool).", gt=0)
    batch_size: int = _field(128, "Rows per step, each with its clean image and one view per attack.", gt=0)
    lr: float = _field(1e-3, "The paper's initial (outer, Adam) learning rate; see `lr_decay_epochs`.", gt=0)
    lr_decay_epochs: list[int] = _field(
        doc="Step decay of the outer learning rate: an epoch (1-based) after k of these epochs trains at "
            "lr * lr_decay_factor^k, e.g. [25] with 0.1 trains epochs 1-25 at lr and 26 on at lr / 10. "
            "[] = constant, as the paper.", factory=list)
    lr_decay_factor: float = _field(0.1, "Factor applied at each of `lr_decay_epochs`.", gt=0, le=1,
                                    hint="0.1 = a tenth after each decay epoch")
    inner_lr: float = _field(1e-3, "α: learning rate of the inner (meta-train) SGD step.", gt=0)
    meta_test_weight: float = _field(1.0, "β: weight of the meta-test loss on the held-out domain.", ge=0,
                                     hint="0 switches the term off")
    first_order: bool = _field(False, "Drop the second-order terms of the meta-gradient (faster, an "
                                      "approximation); off = exact, as the paper.")
    use_meta: bool = _field(True, "Meta-learning on (one domain held out per step for the meta-test); off = one plain "
                                  "step on the sum over all domains. Table 8 ablation.")
    use_ac: bool = _field(True, "Adversarial consistency (AC) term on. Table 8 ablation.")
    use_cc: bool = _field(True, "Cyclic consistency (CC) term on. Table 8 ablation.")
    use_distillation: bool = _field(
        True, "Student encoder with the frozen teacher head (Table 8 `DST`); off = a full classifier trained with "
              "cross-entropy, which needs `use_ac: false` and `use_cc: false`.")
    variant: str = _field(
        "mid", "Name of this MID model: `models/<variant>.pt`, MLflow run `<name>/<variant>` and its evaluation "
               "row. Lower-case letters, digits, `_` or `-`, starting with a letter; not a base model name.")
    attacks: list[str] | None = _field(None, "Train on this subset of `pool.attacks` only (Table 10 "
                                             "leave-one-out); null = all of them.")
    temperature: float = _field(1.0, "Softmax temperature of the feature distributions that AC and CC compare.", gt=0)
    kl_reduction: Literal[KL_REDUCTIONS] = _field(  # type: ignore[valid-type]
        "batchmean", "How AC and CC reduce over feature elements: `batchmean` is the true KL, summed over channels "
                     "and positions (docs/design.md); `elementmean` also divides by the number of feature elements, "
                     "the official code's `nn.KLDivLoss()` default, against which its 1.5 / 0.8 weights were tuned.",
        hint="batchmean: true KL; elementmean: the official code's mean over feature elements")
    train_weights: LossWeightsConfig = _field(doc="Loss weights of the meta-train phase (the paper's 1.5 / 0.8 / 1).",
                                              factory=LossWeightsConfig)
    test_weights: LossWeightsConfig = _field(doc="Loss weights of the meta-test phase (all 1).",
                                             factory=lambda: LossWeightsConfig(ac=1.0, cc=1.0, lc=1.0))
    student_init: Literal["teacher", "random"] = _field(
        "teacher", "Start the student encoder from the teacher's encoder (the paper) or from random weights.")
    continue_from: str | None = _field(
        None, "Continue the finished MID variant of this name (same experiment) for more epochs: start from its last "
              "training state (student, optimizer, epoch, step) instead of from the teacher, which equals one longer "
              "run. Needs a static pool. null = start fresh.")
    num_workers: int = _field(1, "Data-parallel training workers; each takes its share of the blocks (of the pool, or "
                                 "of the training images when the views are generated during training) in batches "
                                 "of `batch_size`, and the gradients are averaged every step.", gt=0)
    worker_cpus: float = _field(0.5, "CPUs reserved per worker.", gt=0)
    use_gpu: bool = _field(False, "One GPU per worker, gradients all-reduced with NCCL; off = CPU with gloo.")
    torch_threads: int = _field(0, "Torch threads per worker; 0 = automatic (machine cores / workers).", ge=0,
                                hint="0 = automatic")
    shuffle_buffer: int = _field(
        2048, "Rows per shuffle window: training reads whole store blocks in a fixed seeded order and shuffles "
              "each window of this many rows per epoch (a window holds at least `batch_size` rows). Larger mixes "
              "more at the cost of memory; 2048 is eight default blocks.", gt=0)
    log_every: int = _field(10, "Steps between MLflow metric logs.", gt=0)
    verify_sync: bool = _field(False, "After every step, check that all workers hold identical parameters (for "
                                      "tests and debugging; costs an all-gather per step).")
    online_attacks: bool = _field(
        False, "Generate each batch's attack views against the current deployed model just before its step instead "
               "of reading the pool (adaptive MID), in either executor. The views are never stale, at the cost of "
               "the attacks every step; there is no pool to refresh or continue.")
    attack_refresh_steps: int = _field(
        0, "Generate the attack views during training, like `online_attacks`, but against a frozen snapshot of the "
           "deployed model refreshed every K steps, one window ahead (double buffering): each epoch is cut into "
           "windows of K steps; the views of window w+1 are made against the model at the start of window w, those "
           "of window 0 against the model at the epoch's start. A step's views are therefore K to 2K-1 steps old "
           "(0 to K-1 in an epoch's first window; recorded per epoch as `attack_staleness_steps`). 0 = off.", ge=0,
        hint="0 = off; K >= 1 refreshes the attacked model every K steps")

    def lr_at(self, epoch: int) -> float:
        """The outer (Adam) learning rate of 0-based epoch ``epoch``: ``lr`` decayed by ``lr_decay_factor`` once for
        every entry of ``lr_decay_epochs`` that is <= ``epoch`` (so [25] changes it from the 26th epoch on)."""
        return self.lr * self.lr_decay_factor ** sum(1 for e in self.lr_decay_epochs if e <= epoch)


class AdversarialTrainingConfig(_Section):
    """Madry et al. PGD adversarial training of a standard classifier (the AT baseline; trained when
    `evaluation.models` lists `at`). Each batch is replaced by PGD examples against the current model."""

    epochs: int = _field(10, "Training epochs.", gt=0)
    batch_size: int = _field(128, "Images per step.", gt=0)
    lr: float = _field(1e-3, "Adam learning rate.", gt=0)
    eps: float | None = _field(None, "L-inf budget of the training PGD (images in [0, 1]); null = the data set's eps "
                                     "under `data.eps_convention`, as the evaluation.", gt=0, le=1)
    steps: int = _field(40, "PGD iterations per batch (Madry et al.: 40).", gt=0)
    step_size: float | None = _field(None, "PGD step size; null = eps / 30 (0.01 at eps 0.3).", gt=0)
    seed_offset: int = _field(3000, "The AT model is trained with seed + this offset.")


class TradesConfig(AdversarialTrainingConfig):
    """TRADES (Zhang et al. 2019) adversarial training of a standard classifier (a baseline; trained when
    `evaluation.models` lists `trades`): CE on the clean batch + `beta` x KL(clean || adversarial), the adversarial
    view found by PGD on that KL. The same budget fields as `at`, so equal-budget comparisons set the same values."""

    beta: float = _field(6.0, "Weight of the KL (robustness) term: 6 is the TRADES paper's MNIST / CIFAR setting, "
                              "1 favours clean accuracy.", gt=0)


class EvaluationConfig(_Section):
    """Stage 4: the robustness tables: which models, attacks and protocols."""

    protocols: list[Literal["paper", "whitebox", "transfer"]] = _field(
        doc="`paper`: each model on the fixed test set attacked on the pool's source model (how the paper's Table 2 "
            "was made); `whitebox`: every attack computed against the evaluated model itself; `transfer`: the "
            "fixed test set attacked on the independently trained substitute (Table 3).", factory=lambda: list(PROTOCOLS),
        min_length=1)
    attacks: list[str] = _field(
        doc="Attack columns of the tables (`_N` untargeted, `_T` targeted): the paper's (`PGD`, `MIM`, `FGSM`, `BIM`, "
            "`CW`, `JSMA`, `AA`) and the white-box threat-model columns `AAL2_N` (AutoAttack, L2), `APGDL1_N` "
            "(AutoAttack's L1 APGD), `DDN_N` (L2, minimum-norm: an image counts as robust when DDN fails or needs "
            "more than `eps_l2`), `FAB_N` (L-inf, `eps`) and `STADV_N` (stAdv, spatial, no budget). Those five are "
            "computed on the scored model only: list them with `protocols: [whitebox]` (the paper and transfer "
            "protocols score fixed stores of L-inf attacks; a config that mixes them is refused). A whitebox row also "
            "reports the per-sample worst case of each norm (`worst_linf`, `worst_l2`, `worst_l1`) and their `union`: "
            "an image counts only if it survives every budgeted column of the row (CW, JSMA and STADV have no budget "
            "and are left out).",
        factory=lambda: ["PGD_N", "PGD_T", "MIM_N", "MIM_T", "FGSM_N", "FGSM_T", "BIM_N", "BIM_T", "CW_N", "CW_T",
                         "AA_N", "JSMA_T"])
    eps: float | None = _field(None, "L-inf budget of the evaluation attacks (images in [0, 1]); null = the data "
                                     "set's eps under `data.eps_convention` (0.3 on MNIST-like data, as the paper).",
                               gt=0, le=1)
    eps_l2: float | None = _field(None, "L2 budget of `AAL2_N` and `DDN_N` (images in [0, 1]); null = 1.5, a budget "
                                        "for 28x28 MNIST-scale images.", gt=0)
    eps_l1: float | None = _field(None, "L1 budget of `APGDL1_N` (images in [0, 1]); null = 12, a budget for 28x28 "
                                        "MNIST-scale images.", gt=0)
    steps: int | None = _field(None, "Iterations of PGD, MIM and BIM; null = the paper's defaults (40).", gt=0)
    step_size: float | None = _field(None, "Step size of PGD, MIM and BIM; null = the paper's defaults.", gt=0)
    limit: int | None = _field(None, "Evaluate on the first N test images; null = the full test set.", gt=0)
    slow_attack_limit: int = _field(1000, "CW and JSMA run on the first N test images only (they are slow; the "
                                          "tables label it).", gt=0)
    batch_size: int = _field(256, "Images per attack batch.", gt=0)
    models: list[str] = _field(
        doc="Table rows: `teacher` (undefended), `standard`, `substitute`, `at` (Madry AT), `trades` (TRADES) or "
            "any MID variant name (`mid.variant`).", factory=lambda: ["teacher", "mid"])
    verdict_pgd_restarts: int = _field(
        0, "White-box verdict (whitebox protocol): PGD with this many random restarts, and each model's per-sample "
           "worst case over every L-inf attack of its row (AutoAttack included) on the first `limit` images; "
           "0 = no verdict.", ge=0, hint="0 = no verdict")
    verdict_pgd_steps: int = _field(100, "Iterations of the verdict's PGD.", gt=0)
    verdict_pgd_step_size: float = _field(0.01, "Step size of the verdict's PGD.", gt=0)
    verdict_square_queries: int = _field(
        0, "When AutoAttack's own check says its black-box Square broke points the gradient attacks missed, run a "
           "longer Square with this many queries on the images that survive the worst case (so gradient masking "
           "cannot keep points robust). Needs `verdict_pgd_restarts` >= 1; 0 = off.", ge=0,
        hint="0 = no Square stage")
    verdict_square_restarts: int = _field(1, "Restarts of that Square stage.", gt=0)


class AnalysisConfig(_Section):
    """Stage 5: the paper's analysis figures (Figs. 7-14), each a PNG with its numbers as JSON under
    `<output_dir>/analysis/`, on the first test images. Attacked inputs come from the `paper` test store where it
    holds them, else are computed against the pool's source model, as that store's are."""

    figures: list[Literal[ANALYSIS_FIGURES]] = _field(  # type: ignore[valid-type]
        doc="Figures to make: `reconstruction` (Fig. 7, the teacher's D_t(E_t(x)) and R²), `regeneration` (Fig. 11, "
            "D_t(E_s(x_adv)) of MID next to the teacher's D_t(E_t(x_adv)), PSNR / SSIM, the teacher's accuracy on "
            "them), `gradients` (Fig. 8, input gradients), `tsne` (Fig. 9, encoder features), `sparsity` (Fig. 10, "
            "Σθ² of the student per epoch), `attention` (Fig. 12, Grad-CAM) and `frequency` (Figs. 13-14, accuracy "
            "on low- and high-pass filtered inputs). [] = none (`mid run` then skips the stage).",
        factory=lambda: list(ANALYSIS_FIGURES))
    images: int = _field(256, "Analyse the first N test images (every number is computed on all of them).", gt=0)
    attacks: list[str] | None = _field(
        None, "Attacks shown and measured next to benign; null = `pool.attacks`, then the other "
              "`evaluation.attacks` except the slow CW, JSMA and AA.")
    show: int = _field(8, "Images shown in the reconstruction figure.", gt=0)
    grid_images: int = _field(2, "Images shown per attack in the regeneration, gradient and attention grids (each "
                                 "a block of rows).", gt=0)
    tsne_images: int = _field(128, "Images per domain (benign and each t-SNE attack) embedded by t-SNE.", gt=2)
    tsne_attacks: list[str] | None = _field(
        None, "Attacks embedded next to benign in the t-SNE figure (from the analysed attacks); null = the first "
              "pool attack and the first attack outside the pool (a known and an unknown one, as Fig. 9).")
    tsne_perplexity: float = _field(30.0, "t-SNE perplexity (lowered for small point sets).", gt=0)
    frequency_radii: list[int] = _field(
        doc="Cut-off radii R of the FFT filters, in frequency indices (R = 0: the low-pass image is the mean; "
            "the paper sweeps 0-16 on 32x32 images).", factory=lambda: list(range(0, 17, 2)), min_length=1)
    mid_model: str | None = _field(None, "The MID variant analysed (`models/<name>.pt`); null = `mid.variant`.")
    undefended: Literal["teacher", "standard"] = _field(
        "teacher", "The undefended baseline the defenses are compared with: the teacher (E_t then C_t) or the "
                   "standard classifier.")


class TrackingConfig(_Section):
    """MLflow tracking."""

    uri: str | None = _field(None, "MLflow tracking URI; null = `$MLFLOW_TRACKING_URI`, else "
                                   "`sqlite:///<output_dir>/mlflow.db`.")
    experiment: str | None = _field(None, "MLflow experiment name; null = `mid-<data.dataset>`.")


class ExperimentConfig(_Section):
    """Top level: the experiment's name, seed and output folder, and one key per section."""

    name: str = _field("experiment", "Experiment name: the MLflow run prefix and, for shipped configs, the file "
                                     "name under configs/.")
    seed: int = _field(0, "Seed of everything random (initialisation, attack draws, batch order, held-out "
                          "domains); the same config and seed give the same results.")
    output_dir: str = _field("runs/experiment", "Folder for the stores, checkpoints, tables and the default MLflow "
                                                "database.")
    data: DataConfig = _field(doc="The data set and where it is.", factory=DataConfig)
    model: ModelConfig = _field(doc="The network architecture.", factory=ModelConfig)
    teacher: TeacherConfig = _field(doc="Stage 1: the teacher and the plain classifiers.", factory=TeacherConfig)
    pool: PoolConfig = _field(doc="Stage 2: the adversarial pool.", factory=PoolConfig)
    mid: MidConfig = _field(doc="Stage 3: MID meta-training.", factory=MidConfig)
    at: AdversarialTrainingConfig = _field(doc="The adversarial-training (AT) baseline.", factory=AdversarialTrainingConfig)
    trades: TradesConfig = _field(doc="The TRADES baseline.", factory=TradesConfig)
    evaluation: EvaluationConfig = _field(doc="Stage 4: evaluation and tables.", factory=EvaluationConfig)
    analysis: AnalysisConfig = _field(doc="Stage 5: the analysis figures.", factory=AnalysisConfig)
    tracking: TrackingConfig = _field(doc="Where runs are tracked (MLflow).", factory=TrackingConfig)

    @model_validator(mode="after")
    def _resolve_eps(self) -> "ExperimentConfig":
        """Fill every eps left null with the data set's eps under ``data.eps_convention``, and the AT step size with
        eps / 30 (AT and TRADES); explicit values win."""
        from mid_core.datasets import EPS

        eps = EPS[self.data.eps_convention].get(self.data.dataset, 0.3)
        for section in (self.pool, self.evaluation, self.at, self.trades):
            if section.eps is None:
                object.__setattr__(section, "eps", eps)
        for section in (self.at, self.trades):
            if section.step_size is None:
                object.__setattr__(section, "step_size", section.eps / 30)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts, lists and scalars (JSON- and YAML-able; ``config_from_dict`` reads it)."""
        return self.model_dump()

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    def tracking_uri(self) -> str:
        return self.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.out / 'mlflow.db').resolve()}"

    def experiment_name(self) -> str:
        return self.tracking.experiment or f"mid-{self.data.dataset}"


# The sections by key, in file order (the reference and the tests walk them).
SECTIONS: dict[str, type[_Section]] = {name: f.annotation for name, f in ExperimentConfig.model_fields.items() if _is_model(f.annotation)}


# ---- pydantic errors -> one-line ConfigError ------------------------------------------------------------------------

def show(value: Any, quote: bool = True) -> str:
    """``value`` as it would be written in YAML (null, true, [a, b], {k: v}), strings quoted unless ``quote`` is
    false: for messages and the reference."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v, quote)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v, quote) for v in value) + "]"
    if isinstance(value, str) and not quote:
        return value
    return repr(value)


def bounds(info: FieldInfo) -> str:
    """The numeric bounds declared on a field: '> 0', '>= 0', 'in (0, 1]' or ''."""
    found = {name: getattr(m, name) for m in info.metadata for name in ("gt", "ge", "lt", "le")
             if getattr(m, name, None) is not None}
    lo = ("(", found["gt"]) if "gt" in found else ("[", found["ge"]) if "ge" in found else None
    hi = (")", found["lt"]) if "lt" in found else ("]", found["le"]) if "le" in found else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {hi[1]}"
    return ""


def _expects(annotation: Any) -> str:
    """What a value of this type is, in words: 'an integer', 'true or false', "'bce', 'l2' or 'l1'", ..."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not None and len(args) < len(get_args(annotation)):  # X | None
        return f"{_expects(args[0])} or null"
    if get_origin(annotation) is Literal:
        names = [repr(a) for a in get_args(annotation)]
        return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if get_origin(item) is Literal:
            return f"a list of {_expects(item)}"
        return {int: "a list of integers", str: "a list of names"}.get(item, f"a list of {_expects(item)}")
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _resolve(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None, FieldInfo | None, tuple[Any, ...]]:
    """Follow an error location through the models: (dotted key path, the model the path ends in or None, the
    field it ends at or None, the rest of the location, e.g. a list index or an unknown key)."""
    model: type[BaseModel] | None = ExperimentConfig
    names: list[str] = []
    info: FieldInfo | None = None
    for i, part in enumerate(loc):
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return ".".join(names), model, info, tuple(loc[i:])
        info = model.model_fields[part]
        names.append(part)
        model = info.annotation if _is_model(info.annotation) else None
    return ".".join(names), model, info, ()


def _message(error: Mapping[str, Any]) -> str:
    kind, value = error["type"], error.get("input")
    path, model, info, rest = _resolve(tuple(error["loc"]))
    where = path or "config"
    if kind == "extra_forbidden" and model is not None:
        key = f"{path}.{rest[0]}" if path else str(rest[0])
        valid = sorted(model.model_fields)
        close = difflib.get_close_matches(str(rest[0]), valid, n=1)
        fix = f" Did you mean {close[0]!r}?" if close else " Remove it or use a valid key."
        return f"unknown config key {key!r}.{fix} Valid keys here: {valid}"
    if kind == "invalid_key" and model is not None:
        return f"{where}: key {value!r} must be a name (a string); valid keys here: {sorted(model.model_fields)}"
    if kind in ("model_type", "dict_type") and model is not None:
        what = "a mapping of sections" if not path else "a section (a mapping of its keys)"
        return (f"{where} must be {what}, got {type(value).__name__} {show(value)}; valid keys here: "
                f"{sorted(model.model_fields)}")
    if info is None:
        return f"{where}: {error['msg']}"
    hint = (info.json_schema_extra or {}).get("hint") if isinstance(info.json_schema_extra, dict) else None
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{path} must be {bounds(info)}{f' ({hint})' if hint else ''}, got {show(value)}"
    if kind == "too_short":
        return f"{path} must not be empty: list at least one of {_expects(info.annotation).removeprefix('a list of ')}"
    expected = _expects(info.annotation)
    if kind == "literal_error" and hint:
        expected = f"{expected} ({hint})"
    if rest and isinstance(rest[0], int):  # one item of a list
        return f"{path} must be {expected}, got {show(value)} at position {rest[0]}"
    if value is None:
        return (f"{path} must be {expected}, got null; give a value or delete the key for the default "
                f"({show(info.get_default(call_default_factory=True))})")
    got = f"{path} must be {expected}, got {show(value)}"
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if not isinstance(parsed, str) and parsed is not None:
            return f"{got}: a quoted string; write it without quotes ({path.rsplit('.', 1)[-1]}: {value})"
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number) and "number" in expected:
            return (f"{got}: YAML reads a number without a dot, such as 1e-3, as a string; write "
                    f"{path.rsplit('.', 1)[-1]}: {number!r}")
    return got


def _one_line(exc: ValidationError) -> NoReturn:
    """Raise the first of pydantic's errors as a one-line ``ConfigError`` (the old checker's style: first problem)."""
    raise ConfigError(_message(exc.errors(include_url=False)[0])) from None


def _build(raw: Any) -> ExperimentConfig:
    """Build the models from a mapping; types, unknown keys and per-field bounds are checked here."""
    if raw is None:
        raw = {}
    if isinstance(raw, Mapping) and not isinstance(raw, dict):
        raw = dict(raw)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        _one_line(exc)


# ---- checks across fields and against the registries ----------------------------------------------------------------

def _check_attacks(names: list[str], steps: int | None, path: str) -> None:
    from mid_core.attacks import default_spec

    for name in names:
        try:
            default_spec(name, **({"steps": steps} if steps is not None else {}))
        except ValueError as exc:
            raise ConfigError(f"{path}: {' '.join(str(exc).split())}") from None
    if len(set(names)) != len(names):
        raise ConfigError(f"{path} lists an attack twice: {names}; list each once")


def _check_whitebox_only(names: list[str], protocols: list[str]) -> None:
    from mid_core.attacks import WHITEBOX_ONLY_COLUMNS

    fixed = [p for p in protocols if p != "whitebox"]
    only = [a for a in names if a in WHITEBOX_ONLY_COLUMNS]
    if fixed and only:
        raise ConfigError(f"evaluation.attacks: {only} are white-box only (computed on the scored model), but "
                          f"evaluation.protocols {fixed} score fixed stores of L-inf attacks: set evaluation.protocols: "
                          "[whitebox] or remove them from evaluation.attacks")


def analysis_attacks(cfg: ExperimentConfig) -> list[str]:
    """The attacks the analysis stage shows: ``analysis.attacks``, else ``pool.attacks`` followed by the other
    ``evaluation.attacks`` except CW, JSMA and AA (seconds per image) and the white-box-only threat-model columns."""
    from mid_core.attacks import WHITEBOX_ONLY_COLUMNS

    if cfg.analysis.attacks is not None:
        return list(cfg.analysis.attacks)
    rest = [a for a in cfg.evaluation.attacks if a not in cfg.pool.attacks and a not in WHITEBOX_ONLY_COLUMNS
            and not a.startswith(("CW", "JSMA", "AA"))]
    return [*cfg.pool.attacks, *rest]


def validate(cfg: ExperimentConfig, check_data: bool = True) -> ExperimentConfig:
    """Check every value of ``cfg`` (again, so attribute writes are covered too), then the names against the
    registries and the settings that depend on each other; raise ``ConfigError`` with a fix on the first problem."""
    _build(cfg.to_dict())
    if cfg.data.dataset not in DATASETS:
        raise ConfigError(f"data.dataset {cfg.data.dataset!r} is unknown; choose one of {list(DATASETS)}")
    if cfg.model.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone {cfg.model.backbone!r} is unknown; choose one of {sorted(BACKBONES)}")
    mid, pool, ev = cfg.mid, cfg.pool, cfg.evaluation
    if mid.continue_from is not None:
        if mid.continue_from == mid.variant:
            raise ConfigError(f"mid.continue_from must name another variant than mid.variant ({mid.variant!r}); "
                              "give the longer run its own variant name, e.g. mid.variant: mid_60ep")
        if pool.refresh_every:
            raise ConfigError("mid.continue_from works with a static pool only (pool.refresh_every: 0): a refreshed "
                              "run continues its own segments already")
    decay = mid.lr_decay_epochs
    if not all(e > 0 for e in decay) or sorted(set(decay)) != decay:
        raise ConfigError(f"mid.lr_decay_epochs must be a list of increasing positive epoch numbers (e.g. [25]: "
                          f"lr / 10 from epoch 26 on), got {decay!r}")
    if ev.verdict_square_queries and not ev.verdict_pgd_restarts:
        raise ConfigError("evaluation.verdict_square_queries runs inside the white-box verdict: set "
                          "evaluation.verdict_pgd_restarts >= 1 too (e.g. 2)")
    if mid.online_attacks and (pool.refresh_every or mid.continue_from):
        raise ConfigError("mid.online_attacks generates every batch's views against the current model, so there is no "
                          "pool to refresh or continue: set pool.refresh_every: 0 and mid.continue_from: null")
    if mid.attack_refresh_steps and mid.online_attacks:
        raise ConfigError("mid.attack_refresh_steps and mid.online_attacks both generate the views during training: "
                          "keep one (mid.online_attacks: false for views refreshed every K steps)")
    if mid.attack_refresh_steps and (pool.refresh_every or mid.continue_from):
        raise ConfigError("mid.attack_refresh_steps generates the views during training, so there is no pool to "
                          "refresh or continue: set pool.refresh_every: 0 and mid.continue_from: null")
    _check_attacks(pool.attacks, pool.steps, "pool.attacks")
    if len(pool.attacks) + 1 < 2:
        raise ConfigError("pool.attacks must list at least one attack: meta-learning holds one domain out of "
                          "benign + attacks, so it needs at least two domains")
    if any(name.startswith(("CW", "JSMA", "AA")) for name in pool.attacks):
        raise ConfigError("pool.attacks supports PGD, MIM, FGSM and BIM (L-inf, eps-bounded); CW, JSMA and AA are "
                          "evaluation-only: remove them from pool.attacks")
    _check_attacks(ev.attacks, ev.steps, "evaluation.attacks")
    _check_whitebox_only(ev.attacks, ev.protocols)
    an = cfg.analysis
    if an.attacks is not None:
        _check_attacks(an.attacks, ev.steps, "analysis.attacks")
    if an.tsne_attacks is not None:
        outside = [a for a in an.tsne_attacks if a not in analysis_attacks(cfg)]
        if outside or len(set(an.tsne_attacks)) != len(an.tsne_attacks):
            raise ConfigError(f"analysis.tsne_attacks must list analysed attacks once each ({analysis_attacks(cfg)}); "
                              f"{outside or an.tsne_attacks} is not: add them to analysis.attacks or remove them")
    if any(r < 0 for r in an.frequency_radii):
        raise ConfigError(f"analysis.frequency_radii must be cut-off radii >= 0, got {an.frequency_radii}")
    if an.mid_model is not None and (not VARIANT_NAME.fullmatch(an.mid_model) or an.mid_model in BASE_MODELS):
        raise ConfigError(f"analysis.mid_model must name a MID variant (mid.variant, e.g. 'mid'), got {an.mid_model!r}")
    if not VARIANT_NAME.fullmatch(mid.variant) or mid.variant in BASE_MODELS:
        raise ConfigError(f"mid.variant must be lower-case letters, digits, '_' or '-' (starting with a letter) and not "
                          f"one of {sorted(BASE_MODELS)}, got {mid.variant!r}")
    if cfg.model.pretrained is not None:
        if not cfg.model.backbone.startswith("vit"):
            raise ConfigError(f"model.pretrained loads torchvision ViT weights; backbone {cfg.model.backbone!r} is not a "
                              "ViT: set model.pretrained: null")
        if check_data and not Path(cfg.model.pretrained).is_file():
            raise ConfigError(f"model.pretrained {cfg.model.pretrained!r} is not a file; on a machine with network save "
                              "torchvision's weights there (python -c \"import torch, torchvision; torch.save(torchvision."
                              "models.vit_b_16(weights='IMAGENET1K_V1').state_dict(), 'vit_b_16.pth')\") or set it to null")
    if not BACKBONES[cfg.model.backbone].has_decoder and mid.use_cc and (mid.train_weights.cc or mid.test_weights.cc):
        raise ConfigError(f"model.backbone {cfg.model.backbone!r} has no decoder, so there is no cyclic consistency (CC): "
                          "set mid.use_cc: false (MID then uses AC + LC, as the paper does for its ViTs)")
    if not BACKBONES[cfg.model.backbone].has_decoder and cfg.teacher.recon_weight > 0:
        raise ConfigError(f"model.backbone {cfg.model.backbone!r} has no decoder, so the teacher has no reconstruction "
                          "loss: set teacher.recon_weight: 0")
    if not mid.use_distillation and (mid.use_ac or mid.use_cc):
        raise ConfigError("mid.use_distillation: false trains a plain classifier with cross-entropy, which has no teacher "
                          "features for AC/CC; also set mid.use_ac: false and mid.use_cc: false")
    if mid.attacks is not None:
        missing = [a for a in mid.attacks if a not in pool.attacks]
        if missing or not mid.attacks:
            raise ConfigError(f"mid.attacks must be a non-empty subset of pool.attacks {pool.attacks}; "
                              f"{missing or 'empty list'} is not")
    bad_models = [m for m in ev.models if m not in BASE_MODELS and not VARIANT_NAME.fullmatch(m)]
    if bad_models or not ev.models:
        raise ConfigError(f"evaluation.models must list models from {sorted(BASE_MODELS)} or MID variant names "
                          f"(mid.variant, e.g. 'mid'), got {ev.models}")
    if check_data and not cfg.data.download:
        try:
            check_data_available(cfg.data.dataset, cfg.data.root)
        except FileNotFoundError as exc:
            raise ConfigError(" ".join(str(exc).split())) from None
    return cfg


def config_from_dict(raw: Mapping[str, Any], check_data: bool = True) -> ExperimentConfig:
    """Build and validate a config from a mapping (e.g. parsed YAML or a checkpoint's saved config)."""
    return validate(_build(raw), check_data=check_data)


# ---- YAML files, base: inheritance and --set overrides --------------------------------------------------------------

def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where} ({' '.join(str(getattr(exc, 'problem', None) or exc).split())})"


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Parse one config file; a top-level ``base: other.yaml`` (relative to this file) is loaded first and this
    file's keys are merged over it, so a variant config states only what it changes."""
    named_by = f" (the base: of {chain[-1]})" if chain else ""
    if not path.exists():
        raise ConfigError(f"config file {path}{named_by} does not exist; see configs/ for examples")
    if path.resolve() in chain:
        raise ConfigError(f"config {path} includes itself through 'base:' ({' -> '.join(str(c) for c in chain)}); "
                          "remove one of the base: lines")
    try:
        with path.open() as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML{_yaml_problem(exc)}; fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}{named_by} cannot be read ({' '.join(str(exc).split())}); give the "
                          "path of a readable YAML file") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, mid:, ...), got "
                          f"{type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {show(base)}")
    return _deep_merge(_read_yaml(path.parent / base, (*chain, path.resolve())), raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``key.sub=value`` override to the raw mapping (the value is parsed as YAML)."""
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. mid.epochs=10)")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML{_yaml_problem(exc)}; quote it or fix "
                          "its syntax") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is a value, not a section; set "
                              f"{'.'.join(parts[:i + 1])}=... instead")
    node[parts[-1]] = parsed


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, check_data: bool = True) -> ExperimentConfig:
    """Load a YAML config (following ``base:``), apply ``key.sub=value`` overrides (values parsed as YAML), validate."""
    raw = _read_yaml(Path(path))
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw, check_data=check_data)
