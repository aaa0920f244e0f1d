"""Slow fault-injection tests: whole jobs SIGKILLed mid-run and rerun (`bash scripts/test.sh -m slow`)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_test.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _job(stage: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / f"{stage}.py"), "--config", str(CONFIG), "--set", f"output_dir={out}", *extra]


def _done_blocks(store: Path) -> int:
    from storage_schemas import open_store

    try:
        return int(open_store(store).completed_blocks().sum())
    except Exception:
        return 0


def test_generation_job_killed_mid_run_resumes_to_an_identical_store(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_job("train_teacher", reference), check=True, env=env, cwd=REPO)
    shutil.copytree(reference / "models", killed / "models")
    subprocess.run(_job("generate_pool", reference, "--no-test-stores"), check=True, env=env, cwd=REPO)

    proc = subprocess.Popen(_job("generate_pool", killed, "--no-test-stores", "--set", "pool.num_actors=1"),
                            env=env, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = killed / "stores" / "pool_train.zarr"
    deadline = time.monotonic() + 600
    while _done_blocks(store) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "generation finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the killed driver's private Ray cluster: its processes carry the driver's pid in their session name
    subprocess.run(["pkill", "-9", "-f", f"session_[0-9_-]*_{proc.pid}( |$)"], check=False)
    partial = _done_blocks(store)
    assert 1 <= partial < 6, f"expected a partial store, found {partial} blocks done"

    subprocess.run(_job("generate_pool", killed, "--no-test-stores"), check=True, env=env, cwd=REPO)
    from storage_schemas import open_store

    a = open_store(reference / "stores" / "pool_train.zarr", require_complete=True)
    b = open_store(store, require_complete=True)
    ra, rb = a.read_rows(0, a.num_rows), b.read_rows(0, b.num_rows)
    for k in ra:
        assert np.array_equal(ra[k], rb[k]), k
