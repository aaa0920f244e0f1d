"""Shared fixtures: data root, tiny configs, and one local Ray cluster per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("MID_DATA_ROOT", str(SHARED_DATA))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray cluster (4 logical CPUs on this 2-core machine, so Data + Train never starve)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=True, ignore_reinit_error=True, log_to_driver=True)
    yield ray
    ray.shutdown()
