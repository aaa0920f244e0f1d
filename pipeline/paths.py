"""Where each stage reads and writes, all under the experiment's ``output_dir``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ExperimentConfig


@dataclass(frozen=True)
class ExperimentPaths:
    root: Path

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> "ExperimentPaths":
        return cls(Path(cfg.output_dir).resolve())

    def model(self, role: str) -> Path:
        """Checkpoint of a trained model: role in teacher | substitute | standard | mid."""
        return self.root / "models" / f"{role}.pt"

    @property
    def stores(self) -> Path:
        return self.root / "stores"

    @property
    def train_pool(self) -> Path:
        return self.stores / "pool_train.zarr"

    @property
    def transfer_test(self) -> Path:
        """The ``transfer`` protocol's cached test sets, one file per attack (pipeline.transfer_sets)."""
        return self.stores / "transfer_test"

    def paper_test(self, slow: bool = False) -> Path:
        """The fixed adversarial test store(s) of the ``paper`` protocol (slow attacks on a smaller subset)."""
        return self.stores / ("paper_test_slow.zarr" if slow else "paper_test.zarr")

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
