"""scripts/pack_out.sh packs a GPU session's folder into what the device tool brings back, losslessly."""
from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pack_out.sh"
DEVICE_MAX_FILES, DEVICE_MAX_FILE_BYTES = 8, 16 * 2**20


def _session_folder(root: Path) -> Path:
    """A folder shaped like scripts/gpu_session.sh's output: runs with results, logs and checkpoints (one 40 MB)."""
    src = root / "gs"
    for run in ("mnist_at", "mnist_online", "fmnist_main"):
        (src / run).mkdir(parents=True)
        (src / run / "results.json").write_text(f'{{"run": "{run}"}}')
        (src / run / "log.txt").write_text(f"[session] {run} exit 0\n")
        (src / run / "teacher.pt").write_bytes(os.urandom(1_000_000))
    (src / "fmnist_main" / "big.pt").write_bytes(os.urandom(40_000_000))  # must be split across pieces
    (src / "gpu_utilization.csv").write_text("timestamp, utilization.gpu [%]\n")
    return src


def _pack(src: Path, dest: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), str(src), str(dest)], check=True, capture_output=True, text=True)


def test_packed_files_fit_what_the_device_tool_brings_back(tmp_path):
    dest = tmp_path / "out"
    _pack(_session_folder(tmp_path), dest)
    files = [p for p in dest.iterdir() if p.is_file()]
    assert 2 <= len(files) <= DEVICE_MAX_FILES
    assert all(p.stat().st_size <= DEVICE_MAX_FILE_BYTES for p in files)


def test_unpacking_restores_the_session_folder_byte_for_byte(tmp_path):
    src, dest, back = _session_folder(tmp_path), tmp_path / "out", tmp_path / "back"
    _pack(src, dest)
    back.mkdir()
    subprocess.run(["tar", "xzf", str(dest / "summary.tgz"), "-C", str(back)], check=True)
    pieces = sorted(dest.glob("checkpoints.tar.*"))
    subprocess.run(f"cat {' '.join(map(str, pieces))} | tar x -C {back}", shell=True, check=True)
    compared = filecmp.dircmp(src, back)
    assert not compared.left_only and not compared.right_only
    for run in ("mnist_at", "mnist_online", "fmnist_main"):
        match, mismatch, errors = filecmp.cmpfiles(src / run, back / run, sorted(os.listdir(src / run)), shallow=False)
        assert not mismatch and not errors, (run, mismatch, errors)


def test_a_missing_source_folder_fails_with_a_clear_message(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "absent"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "no folder" in done.stderr
