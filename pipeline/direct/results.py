"""``results.json`` of a direct run: ``jobs/evaluate.py``'s format plus stage times, histories and benchmarks."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ExperimentConfig


class Results:
    """``results.json`` in ``jobs/evaluate.py``'s format, plus stages / histories / benchmarks; written atomically."""

    def __init__(self, path: Path, cfg: ExperimentConfig, test_images: int, device: torch.device) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "config": cfg.to_dict(), "rows": [], "test_images": test_images,
            "slow_attack_images": min(cfg.evaluation.slow_attack_limit, test_images),
            "driver": "scripts/headline_direct.py (mid_core directly: no Ray, Zarr or MLflow)",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "stages": {}, "training": {}, "benchmarks": {}, "skipped": [],
        }

    def stage(self, name: str, seconds: float, **extra: Any) -> None:
        self.data["stages"][name] = {"seconds": round(seconds, 2), **extra}
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        os.replace(tmp, self.path)
