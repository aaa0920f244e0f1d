"""Experiment configuration: YAML -> typed, validated dataclasses.

Everything is checked before any work starts: unknown keys (with the closest valid key suggested),
unknown data set / backbone / attack names, eps outside (0, 1], non-positive steps or sizes, negative loss
weights, a pool with fewer than two domains, and a data root that lacks the data set. Every error is a
``ConfigError`` whose message names the offending key and says what to change.

This module imports no Ray or MLflow, so scripts that drive ``mid_core`` directly can use it too.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_type_hints

import yaml

from mid_core.datasets import DATASETS, check_data_available
from mid_core.losses import KL_REDUCTIONS
from mid_core.models import BACKBONES


class ConfigError(ValueError):
    """A configuration problem; the message names the key and how to fix it."""


BASE_MODELS = frozenset({"teacher", "substitute", "standard", "at"})  # models trained by the teacher stage
VARIANT_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits | mnist | fmnist
    root: str | None = None  # torchvision root; default $MID_DATA_ROOT, else ./data
    download: bool = False  # let torchvision download (needs network)
    train_limit: int | None = None  # first N training images only (iteration; label results accordingly)


@dataclass
class ModelConfig:
    backbone: str = "lenet5"  # see mid_core.models.BACKBONES


@dataclass
class TeacherConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    recon_loss: str = "bce"  # bce | l2 | l1 (the paper says L1; L1 and L2 collapsed MNIST decoders, see mid_core.training)
    recon_weight: float = 1.0
    substitute_seed_offset: int = 1000  # the substitute (transfer protocol) model uses seed + offset
    standard_seed_offset: int = 2000  # the separate standard classifier (pool.source: standard)
    num_workers: int = 1
    worker_cpus: float = 0.5
    use_gpu: bool = False  # one GPU per Ray Train worker, NCCL backend


@dataclass
class PoolConfig:
    source: str = "teacher"  # teacher | standard: the model the pool's attacks are computed against
    attacks: list[str] = field(default_factory=lambda: ["PGD_N", "PGD_T", "MIM_N", "MIM_T"])
    eps: float = 0.3
    steps: int | None = None  # override PGD/MIM/BIM step count (None: paper defaults, 40)
    step_size: float | None = None  # override PGD/MIM/BIM step size (None: paper defaults, 0.01; BIM 0.05)
    block_size: int = 256  # rows per Zarr chunk == per generation task
    num_actors: int = 1
    actor_cpus: float = 0.5
    actor_gpus: float = 0.0  # GPUs per generation actor (fractions share one GPU); 0 = CPU
    batch_size: int = 256  # attack batch inside an actor
    torch_threads: int = 0  # threads per actor; 0 = auto (machine cores / actors)
    refresh_every: int = 0  # regenerate the pool against the current deployed model every K MID epochs (0 = static)


@dataclass
class LossWeightsConfig:
    ac: float = 1.5
    cc: float = 0.8
    lc: float = 1.0


@dataclass
class MidConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3  # the paper's "initial learning rate"; see lr_decay_epochs
    # Step decay: the outer learning rate is lr * lr_decay_factor**k in an epoch (1-based) after k of these epochs,
    # e.g. [25] with 0.1: epochs 1-25 at lr, 26 on at lr / 10. [] = constant (every run before session 15).
    lr_decay_epochs: list[int] = field(default_factory=list)
    lr_decay_factor: float = 0.1
    inner_lr: float = 1e-3  # α
    meta_test_weight: float = 1.0  # β
    first_order: bool = False
    use_meta: bool = True  # Table 8 ablation: meta on/off
    use_ac: bool = True  # Table 8 ablation: distillation (AC) on/off
    use_cc: bool = True  # Table 8 ablation: cyclic consistency on/off
    use_distillation: bool = True  # Table 8 "DST": student encoder + frozen teacher head; off = a full classifier trained with CE
    variant: str = "mid"  # name of this MID model: models/<variant>.pt, MLflow run <name>/<variant>, an evaluation row
    attacks: list[str] | None = None  # train on this subset of the pool's attacks (Table 10 leave-one-out); None = all
    temperature: float = 1.0
    # How AC and CC reduce over feature elements: "batchmean" (true KL summed over channels and positions, DESIGN.md)
    # or "elementmean" (also divided by the number of feature elements: the official code's nn.KLDivLoss() default,
    # against which its 1.5 / 0.8 weights were tuned). See mid_core/losses.py and docs/results.md.
    kl_reduction: str = "batchmean"
    train_weights: LossWeightsConfig = field(default_factory=LossWeightsConfig)
    test_weights: LossWeightsConfig = field(default_factory=lambda: LossWeightsConfig(1.0, 1.0, 1.0))
    student_init: str = "teacher"  # teacher | random
    # Continue the finished MID variant of this name (same experiment) for more epochs: start from its last training
    # state (student, optimizer, epoch, step) instead of from the teacher. With Adam at a constant learning rate this
    # equals training mid.epochs from scratch, minus the epochs already paid for. None = start fresh.
    continue_from: str | None = None
    num_workers: int = 1
    worker_cpus: float = 0.5
    use_gpu: bool = False  # one GPU per Ray Train worker; gradients all-reduced with NCCL
    torch_threads: int = 0  # threads per worker; 0 = auto (machine cores / workers)
    shuffle_buffer: int = 2048  # rows in each worker's local shuffle buffer
    log_every: int = 10  # steps between MLflow metric logs
    verify_sync: bool = False  # all-gather a parameter checksum after every step (tests / debugging)
    # Diagnostic of scripts/headline_direct.py only (jobs/train_mid.py refuses it): generate each batch's attack views
    # against the current deployed model just before its step instead of reading the pool. The views are then never
    # stale, where pool.refresh_every: 1 gives views up to one epoch old for the same attack cost per epoch; comparing
    # the two tells whether staleness is what keeps a refreshed pool from white-box robustness (docs/results.md).
    online_attacks: bool = False
    # With online_attacks: run the batch's PGD/MIM views as one stacked attack (mid_core.attacks.fused: 40 passes
    # on 4 x 128 images instead of 160 on 128; same draws, same views up to float rounding). False = advertorch one
    # by one, as every run before session 14.
    online_fused: bool = False

    def lr_at(self, epoch: int) -> float:
        """The outer (Adam) learning rate of 0-based epoch ``epoch``: ``lr`` decayed by ``lr_decay_factor`` once for
        every entry of ``lr_decay_epochs`` that is <= ``epoch`` (so [25] changes it from the 26th epoch on)."""
        return self.lr * self.lr_decay_factor ** sum(1 for e in self.lr_decay_epochs if e <= epoch)


@dataclass
class AdversarialTrainingConfig:
    """Madry et al. PGD adversarial training of a standard classifier (the AT baseline; trained when the
    evaluation lists the ``at`` model). Each batch is replaced by PGD examples against the current model."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    eps: float = 0.3
    steps: int = 40
    step_size: float = 0.01
    seed_offset: int = 3000


@dataclass
class EvaluationConfig:
    protocols: list[str] = field(default_factory=lambda: ["paper", "whitebox", "transfer"])
    attacks: list[str] = field(
        default_factory=lambda: ["PGD_N", "PGD_T", "MIM_N", "MIM_T", "FGSM_N", "FGSM_T", "BIM_N", "BIM_T", "CW_N", "CW_T", "AA_N", "JSMA_T"]
    )
    eps: float = 0.3
    steps: int | None = None  # override PGD/MIM/BIM steps (None: paper defaults, 40)
    step_size: float | None = None  # override PGD/MIM/BIM step size (None: paper defaults)
    limit: int | None = None  # first N test images (None: the full test set)
    slow_attack_limit: int = 1000  # CW and JSMA run on the first N test images only (labelled)
    batch_size: int = 256
    # rows: teacher (undefended), standard, substitute, at (Madry AT) or any MID variant name (mid.variant)
    models: list[str] = field(default_factory=lambda: ["teacher", "mid"])
    # white-box verdict (whitebox protocol): PGD with random restarts, and each model's per-sample worst case over
    # every L-inf attack of the row (AutoAttack included) on the first `limit` images; 0 restarts = off
    verdict_pgd_restarts: int = 0
    verdict_pgd_steps: int = 100
    verdict_pgd_step_size: float = 0.01
    # and, when AutoAttack's own check says its black-box Square still broke points the gradient attacks missed,
    # a longer Square (mid_core.square_probe.square_attack) on the images that survive that worst case; 0 = off
    verdict_square_queries: int = 0
    verdict_square_restarts: int = 1


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db
    experiment: str | None = None  # default: mid-<dataset>


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs/experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    mid: MidConfig = field(default_factory=MidConfig)
    at: AdversarialTrainingConfig = field(default_factory=AdversarialTrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    def tracking_uri(self) -> str:
        return self.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.out / 'mlflow.db').resolve()}"

    def experiment_name(self) -> str:
        return self.tracking.experiment or f"mid-{self.data.dataset}"


def _build(cls: type, raw: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(raw).__name__} {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}.{hint} Valid keys here: {sorted(known)}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value, path)
        else:
            kwargs[key] = _coerce(value, hint_type, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{path} must not be empty (null)")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float or text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return float(value)
    if text.startswith("list[int]"):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{path} must be a list of integers, got {value!r}")
        return list(value)
    if text.startswith("list"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path} must be a list of names, got {value!r}")
        return list(value)
    if hint is str or text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    return value


def _check_positive(value: float | int | None, path: str) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{path} must be > 0, got {value}")


def _check_attacks(names: list[str], eps: float, steps: int | None, path: str) -> None:
    from mid_core.attacks import default_spec

    for name in names:
        try:
            default_spec(name, **({"steps": steps} if steps is not None else {}))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if len(set(names)) != len(names):
        raise ConfigError(f"{path} lists an attack twice: {names}")


def validate(cfg: ExperimentConfig, check_data: bool = True) -> ExperimentConfig:
    """Check every value; raise ``ConfigError`` with a fix on the first problem."""
    if cfg.data.dataset not in DATASETS:
        raise ConfigError(f"data.dataset {cfg.data.dataset!r} is unknown; choose one of {list(DATASETS)}")
    if cfg.model.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone {cfg.model.backbone!r} is unknown; choose one of {sorted(BACKBONES)}")
    if cfg.teacher.recon_loss not in ("bce", "l2", "l1"):
        raise ConfigError(f"teacher.recon_loss must be 'bce', 'l2' or 'l1', got {cfg.teacher.recon_loss!r}")
    if cfg.mid.kl_reduction not in KL_REDUCTIONS:
        raise ConfigError(f"mid.kl_reduction must be 'batchmean' (true KL, the default) or 'elementmean' (the official "
                          f"code's nn.KLDivLoss() mean over feature elements), got {cfg.mid.kl_reduction!r}")
    if cfg.pool.source not in ("teacher", "standard"):
        raise ConfigError(f"pool.source must be 'teacher' or 'standard', got {cfg.pool.source!r}")
    if cfg.mid.student_init not in ("teacher", "random"):
        raise ConfigError(f"mid.student_init must be 'teacher' or 'random', got {cfg.mid.student_init!r}")
    if cfg.mid.continue_from is not None:
        if cfg.mid.continue_from == cfg.mid.variant:
            raise ConfigError(f"mid.continue_from must name another variant than mid.variant ({cfg.mid.variant!r}); "
                              "give the longer run its own variant name, e.g. mid.variant: mid_xlong")
        if cfg.pool.refresh_every:
            raise ConfigError("mid.continue_from works with a static pool only (pool.refresh_every: 0): a refreshed "
                              "run continues its own segments already")
    decay = cfg.mid.lr_decay_epochs
    if not all(e > 0 for e in decay) or sorted(set(decay)) != decay:
        raise ConfigError(f"mid.lr_decay_epochs must be a list of increasing positive epoch numbers (e.g. [25]: "
                          f"lr / 10 from epoch 26 on), got {decay!r}")
    if not 0 < cfg.mid.lr_decay_factor <= 1:
        raise ConfigError(f"mid.lr_decay_factor must be in (0, 1] (0.1 = a tenth after each decay epoch), got "
                          f"{cfg.mid.lr_decay_factor}")
    for section, eps in (("pool.eps", cfg.pool.eps), ("evaluation.eps", cfg.evaluation.eps)):
        if not 0 < eps <= 1:
            raise ConfigError(f"{section} must be in (0, 1] (images are in [0, 1]; the paper uses 0.3), got {eps}")
    for path, value in [
        ("teacher.epochs", cfg.teacher.epochs), ("teacher.batch_size", cfg.teacher.batch_size), ("teacher.lr", cfg.teacher.lr),
        ("teacher.num_workers", cfg.teacher.num_workers), ("teacher.worker_cpus", cfg.teacher.worker_cpus),
        ("pool.steps", cfg.pool.steps), ("pool.block_size", cfg.pool.block_size), ("pool.num_actors", cfg.pool.num_actors),
        ("pool.actor_cpus", cfg.pool.actor_cpus), ("pool.batch_size", cfg.pool.batch_size),
        ("mid.epochs", cfg.mid.epochs), ("mid.batch_size", cfg.mid.batch_size), ("mid.lr", cfg.mid.lr),
        ("mid.inner_lr", cfg.mid.inner_lr), ("mid.temperature", cfg.mid.temperature), ("mid.num_workers", cfg.mid.num_workers),
        ("mid.worker_cpus", cfg.mid.worker_cpus), ("evaluation.steps", cfg.evaluation.steps),
        ("pool.step_size", cfg.pool.step_size), ("evaluation.step_size", cfg.evaluation.step_size),
        ("evaluation.limit", cfg.evaluation.limit), ("evaluation.slow_attack_limit", cfg.evaluation.slow_attack_limit),
        ("evaluation.batch_size", cfg.evaluation.batch_size), ("data.train_limit", cfg.data.train_limit),
    ]:
        _check_positive(value, path)
    if cfg.evaluation.verdict_pgd_restarts < 0:
        raise ConfigError(f"evaluation.verdict_pgd_restarts must be >= 0 (0 = no verdict), got {cfg.evaluation.verdict_pgd_restarts}")
    _check_positive(cfg.evaluation.verdict_pgd_steps, "evaluation.verdict_pgd_steps")
    _check_positive(cfg.evaluation.verdict_pgd_step_size, "evaluation.verdict_pgd_step_size")
    if cfg.evaluation.verdict_square_queries < 0:
        raise ConfigError(f"evaluation.verdict_square_queries must be >= 0 (0 = no Square stage), got "
                          f"{cfg.evaluation.verdict_square_queries}")
    _check_positive(cfg.evaluation.verdict_square_restarts, "evaluation.verdict_square_restarts")
    if cfg.evaluation.verdict_square_queries and not cfg.evaluation.verdict_pgd_restarts:
        raise ConfigError("evaluation.verdict_square_queries runs inside the white-box verdict: set "
                          "evaluation.verdict_pgd_restarts >= 1 too (e.g. 2)")
    if cfg.pool.refresh_every < 0:
        raise ConfigError(f"pool.refresh_every must be >= 0 (0 = static pool), got {cfg.pool.refresh_every}")
    if cfg.mid.online_attacks and (cfg.pool.refresh_every or cfg.mid.continue_from):
        raise ConfigError("mid.online_attacks generates every batch's views against the current model, so there is no "
                          "pool to refresh or continue: set pool.refresh_every: 0 and mid.continue_from: null")
    if cfg.mid.online_fused:
        if not cfg.mid.online_attacks:
            raise ConfigError("mid.online_fused changes how mid.online_attacks generates its views: set "
                              "mid.online_attacks: true as well, or drop mid.online_fused")
        unfusable = [a for a in (cfg.mid.attacks or cfg.pool.attacks) if a.split("_")[0] not in ("PGD", "MIM")]
        if unfusable:
            raise ConfigError(f"mid.online_fused stacks PGD and MIM views only, and this variant trains on {unfusable} "
                              "too: set mid.online_fused: false (one attack after the other) or train on PGD/MIM only")
    if cfg.pool.actor_gpus < 0:
        raise ConfigError(f"pool.actor_gpus must be >= 0 (0 = CPU actors), got {cfg.pool.actor_gpus}")
    if cfg.pool.torch_threads < 0 or cfg.mid.torch_threads < 0:
        raise ConfigError("pool.torch_threads and mid.torch_threads must be >= 0 (0 = automatic)")
    if cfg.mid.meta_test_weight < 0 or cfg.teacher.recon_weight < 0:
        raise ConfigError("mid.meta_test_weight and teacher.recon_weight must be >= 0")
    for prefix, w in (("mid.train_weights", cfg.mid.train_weights), ("mid.test_weights", cfg.mid.test_weights)):
        for key in ("ac", "cc", "lc"):
            if getattr(w, key) < 0:
                raise ConfigError(f"{prefix}.{key} must be >= 0 (0 switches the term off), got {getattr(w, key)}")
    _check_attacks(cfg.pool.attacks, cfg.pool.eps, cfg.pool.steps, "pool.attacks")
    if len(cfg.pool.attacks) + 1 < 2:
        raise ConfigError("pool.attacks must list at least one attack: meta-learning holds one domain out of "
                          "benign + attacks, so it needs at least two domains")
    if any(name.startswith(("CW", "JSMA", "AA")) for name in cfg.pool.attacks):
        raise ConfigError("pool.attacks supports PGD, MIM, FGSM and BIM (L-inf, eps-bounded); CW, JSMA and AA are evaluation-only")
    _check_attacks(cfg.evaluation.attacks, cfg.evaluation.eps, cfg.evaluation.steps, "evaluation.attacks")
    unknown = set(cfg.evaluation.protocols) - {"paper", "whitebox", "transfer"}
    if unknown or not cfg.evaluation.protocols:
        raise ConfigError(f"evaluation.protocols must be a non-empty subset of ['paper', 'whitebox', 'transfer'], got {cfg.evaluation.protocols}")
    if not VARIANT_NAME.fullmatch(cfg.mid.variant) or cfg.mid.variant in BASE_MODELS:
        raise ConfigError(f"mid.variant must be lower-case letters, digits, '_' or '-' (starting with a letter) and not one "
                          f"of {sorted(BASE_MODELS)}, got {cfg.mid.variant!r}")
    if not cfg.mid.use_distillation and (cfg.mid.use_ac or cfg.mid.use_cc):
        raise ConfigError("mid.use_distillation: false trains a plain classifier with cross-entropy, which has no teacher "
                          "features for AC/CC; also set mid.use_ac: false and mid.use_cc: false")
    if cfg.mid.attacks is not None:
        missing = [a for a in cfg.mid.attacks if a not in cfg.pool.attacks]
        if missing or not cfg.mid.attacks:
            raise ConfigError(f"mid.attacks must be a non-empty subset of pool.attacks {cfg.pool.attacks}; "
                              f"{missing or 'empty list'} is not")
    for path, value in (("at.epochs", cfg.at.epochs), ("at.batch_size", cfg.at.batch_size), ("at.lr", cfg.at.lr),
                        ("at.steps", cfg.at.steps), ("at.step_size", cfg.at.step_size)):
        _check_positive(value, path)
    if not 0 < cfg.at.eps <= 1:
        raise ConfigError(f"at.eps must be in (0, 1], got {cfg.at.eps}")
    bad_models = [m for m in cfg.evaluation.models if m not in BASE_MODELS and not VARIANT_NAME.fullmatch(m)]
    if bad_models or not cfg.evaluation.models:
        raise ConfigError(f"evaluation.models must list models from {sorted(BASE_MODELS)} or MID variant names "
                          f"(mid.variant, e.g. 'mid'), got {cfg.evaluation.models}")
    if check_data:
        try:
            if not cfg.data.download:
                check_data_available(cfg.data.dataset, cfg.data.root)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
    return cfg


def config_from_dict(raw: Mapping[str, Any], check_data: bool = True) -> ExperimentConfig:
    """Build and validate a config from a mapping (e.g. parsed YAML or a checkpoint's saved config)."""
    return validate(_build(ExperimentConfig, raw, ""), check_data=check_data)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Parse one config file; a top-level ``base: other.yaml`` (relative to this file) is loaded first and this
    file's keys are merged over it, so an ablation config states only what it changes."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
    if path.resolve() in chain:
        raise ConfigError(f"config {path} includes itself through 'base:' ({' -> '.join(str(c) for c in chain)})")
    try:
        with path.open() as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where} ({getattr(exc, 'problem', None) or exc}); "
                          "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {base!r}")
    return _deep_merge(_read_yaml(path.parent / base, (*chain, path.resolve())), raw)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, check_data: bool = True) -> ExperimentConfig:
    """Load a YAML config (following ``base:``), apply ``key.sub=value`` overrides (values parsed as YAML), validate."""
    raw = _read_yaml(Path(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return config_from_dict(raw, check_data=check_data)
