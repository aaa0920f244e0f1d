"""A store written by earlier code (tests/data/store_schema_v1.zarr, schema version 1) still opens,
validates and reads the rows it was written with."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from storage_schemas import SCHEMA_VERSION, create_store, open_store

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "store_schema_v1.zarr"
PYTHON = REPO / ".venv" / "bin" / "python"

ATTACKS = {
    "PGD_N": {"library": "advertorch", "class": "LinfPGDAttack", "eps": 0.3, "steps": 40, "targeted": False},
    "CW_T": {"library": "advertorch", "class": "CarliniWagnerL2Attack", "steps": 100, "targeted": True},
}
IDENTITY = dict(dataset="mnist", split="test", num_rows=6, image_shape=(1, 4, 4), attacks=ATTACKS,
                source_fingerprint="ab" * 32, source_arch="lenet", seed=7, block_size=4)


def expected_rows(start: int, stop: int) -> dict[str, np.ndarray]:
    """The values the fixture was written with (tests/data/make_store_schema_v1.py)."""
    i = np.arange(start, stop)
    clean = ((i[:, None] * 16 + np.arange(16)[None, :]) % 256).astype(np.uint8).reshape(-1, 1, 4, 4)
    return {
        "clean": clean,
        "label": (i % 10).astype(np.int64),
        "adv/PGD_N": 255 - clean,
        "adv/CW_T": clean ^ 0x55,
        "target/CW_T": ((i + 1) % 10).astype(np.int64),
    }


def assert_rows_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_fixture_store_opens_validates_and_reads_known_rows():
    store = open_store(FIXTURE, require_complete=True, expected_fingerprint="ab" * 32)
    store.validate()
    assert store.attrs["schema_version"] == SCHEMA_VERSION == 1
    assert (store.num_rows, store.block_size, store.num_blocks) == (6, 4, 2)
    assert store.attack_names == ["PGD_N", "CW_T"] and store.targeted_attacks == ["CW_T"]
    assert store.attrs["run_id"] == "fixture" and store.attrs["complete"] is True
    assert_rows_equal(store.read_rows(0, 6), expected_rows(0, 6))
    assert_rows_equal(store.read_block(1), expected_rows(4, 6))
    assert_rows_equal(store.read_rows(2, 5, attacks=["CW_T"]),
                      {k: v for k, v in expected_rows(2, 5).items() if k != "adv/PGD_N"})
    assert store.success_rates() == pytest.approx({"PGD_N": 5 / 6, "CW_T": 1 / 6})
    assert store.verify() == []


def test_fixture_store_is_resumed_by_create_store_with_its_identity(tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(FIXTURE, copy)
    store = create_store(copy, **IDENTITY)
    assert store.pending_blocks() == [] and store.attrs["created_at"] == open_store(FIXTURE).attrs["created_at"]
    assert_rows_equal(store.read_rows(0, 6), expected_rows(0, 6))


def test_inspect_cli_reads_fixture_store():
    res = subprocess.run([str(PYTHON), "-m", "storage_schemas.inspect", str(FIXTURE), "--verify"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "2 / 2" in res.stdout and "complete" in res.stdout and "all completed blocks pass" in res.stdout
