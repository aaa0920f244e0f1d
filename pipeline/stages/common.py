"""What several stages share: model fingerprints, which base models a config needs, checked inputs."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.errors import MissingInputError
from pipeline.paths import ExperimentPaths

BASE_ROLES = ("teacher", "substitute", "standard", "at", "trades")


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 of a checkpoint's weights (``storage_schemas.state_dict_fingerprint``): what a store records as the
    model it was attacked on, and what a fixed test set is checked against."""
    from mid_core.checkpoint import read_checkpoint
    from storage_schemas.fingerprint import state_dict_fingerprint

    return state_dict_fingerprint(read_checkpoint(path)["state_dict"])


def require_model(cfg: ExperimentConfig, role: str) -> Path:
    """The checkpoint of ``role`` (a base model or a MID variant), or a one-line error saying which stage makes it."""
    path = ExperimentPaths.of(cfg).model(role)
    if not path.exists():
        how = "mid teacher (jobs/train_teacher.py)" if role in BASE_ROLES else f"mid train with mid.variant: {role}"
        raise MissingInputError(f"{path} does not exist: run {how} with this config first")
    return path


def models_to_train(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """(role, seed) of each base model this config needs: the teacher always; the substitute for the ``transfer``
    protocol (or a ``substitute`` row), the standard classifier as pool source (or a row), Madry AT and TRADES as rows."""
    roles = [("teacher", cfg.seed)]
    if "transfer" in cfg.evaluation.protocols or "substitute" in cfg.evaluation.models:
        roles.append(("substitute", cfg.seed + cfg.teacher.substitute_seed_offset))
    if cfg.pool.source == "standard" or "standard" in cfg.evaluation.models:
        roles.append(("standard", cfg.seed + cfg.teacher.standard_seed_offset))
    if "at" in cfg.evaluation.models:
        roles.append(("at", cfg.seed + cfg.at.seed_offset))
    if "trades" in cfg.evaluation.models:
        roles.append(("trades", cfg.seed + cfg.trades.seed_offset))
    return roles


def pool_source_role(cfg: ExperimentConfig) -> str:
    """The model the training pool and the ``paper`` test set are attacked on: the teacher or the standard model."""
    return "teacher" if cfg.pool.source == "teacher" else "standard"
