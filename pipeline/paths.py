"""Where each stage reads and writes, all under the experiment's ``output_dir``.

Stores live on disk as Zarr v3 groups. Where zarr is not installed (a bare machine running the single-process
executor) they are kept in memory for the lifetime of the process (``storage_schemas``' ``mem://`` backend), so
``mid run --executor local`` still runs every stage end to end there.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ExperimentConfig


def zarr_available() -> bool:
    """Whether the on-disk store backend can be used."""
    return importlib.util.find_spec("zarr") is not None


@dataclass(frozen=True)
class ExperimentPaths:
    root: Path

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> "ExperimentPaths":
        return cls(Path(cfg.output_dir).resolve())

    def model(self, role: str) -> Path:
        """Checkpoint of a trained model: teacher | substitute | standard | at | a MID variant name."""
        return self.root / "models" / f"{role}.pt"

    @property
    def stores(self) -> Path:
        return self.root / "stores"

    def store(self, name: str) -> str:
        """The location of store ``name`` (e.g. ``pool_train``): a Zarr folder, or ``mem://...`` without zarr."""
        path = self.stores / f"{name}.zarr"
        return str(path) if zarr_available() else f"mem://{path}"

    @property
    def train_pool(self) -> str:
        return self.store("pool_train")

    def refreshed_pool(self, version: int, variant: str) -> str:
        """Pool version ``version`` of MID variant ``variant`` (0: the shared pool against the pool's source model;
        later versions are generated against the variant's own deployed model and belong to it)."""
        return self.train_pool if version == 0 else self.store(f"pool_train_{variant}_r{version}")

    def test_store(self, protocol: str, slow: bool = False) -> str:
        """The fixed adversarial test set of the ``paper`` or ``transfer`` protocol (CW/JSMA on a smaller subset)."""
        return self.store(f"{protocol}_test{'_slow' if slow else ''}")

    def training(self, variant: str) -> Path:
        """MID variant ``variant``'s per-epoch training states and deployed models (resume and continuation)."""
        return self.root / "training" / variant

    @property
    def ray_results(self) -> Path:
        return self.root / "ray_results"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def run_ids(self) -> Path:
        """JSON map stage -> MLflow run id, so later stages can link to their parents."""
        return self.root / "mlflow_runs.json"
