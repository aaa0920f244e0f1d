"""scripts/gpu_payload.sh builds what a lent GPU machine needs besides the repository (data .gz files, attack libs)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mid_core.datasets import check_data_available, load_dataset

REPO = Path(__file__).resolve().parents[1]


def _build(dest: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_payload.sh"), "--dest", str(dest), *args],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())


def test_payload_holds_the_gz_data_and_the_attack_libraries(tmp_path):
    try:
        check_data_available("mnist")
    except FileNotFoundError:
        pytest.skip("MNIST not under $MID_DATA_ROOT")
    proc = _build(tmp_path / "p", "--data", "mnist")
    assert proc.returncode == 0, proc.stderr
    raw = tmp_path / "p" / "data" / "MNIST" / "raw"
    assert sorted(f.name for f in raw.iterdir()) == sorted(f"{n}.gz" for n in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    assert load_dataset("mnist", "test", tmp_path / "p" / "data").labels[0].item() == 7  # readable from .gz alone
    site = tmp_path / "p" / "site"
    assert (site / "advertorch" / "attacks" / "iterative_projected_gradient.py").exists()
    assert (site / "pyautoattack" / "autoattack.py").exists() and not (site / "pyautoattack" / "examples").exists()
    assert sum(f.stat().st_size for f in (tmp_path / "p").rglob("*") if f.is_file()) < 60 * 2**20


def test_unknown_data_set_is_refused(tmp_path):
    proc = _build(tmp_path / "p", "--data", "cifar10")
    assert proc.returncode == 2 and "unknown data set cifar10" in proc.stderr
