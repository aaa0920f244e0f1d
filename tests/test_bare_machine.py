"""The single-process executor runs the whole experiment where Ray, Zarr and MLflow are not installed (a bare GPU
box with only PyTorch and the attack libraries): stores in memory, tracking off, the same table written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
for name in ("ray", "zarr", "mlflow"):
    sys.modules[name] = None  # import fails as if not installed
from pipeline.cli import main
code = main(["run", "--config", sys.argv[1], "--executor", "local", "--set", "output_dir=" + sys.argv[2],
             "--set", "teacher.epochs=1", "--set", "mid.epochs=1", "--set", "evaluation.limit=50", "--set", "data.train_limit=256",
             "--set", "evaluation.attacks=[PGD_N, FGSM_N]"])
loaded = sorted(m for m in ("ray", "zarr", "mlflow") if sys.modules.get(m) is not None)
print("LOADED", loaded)
sys.exit(code)
"""


def test_mid_run_local_needs_no_ray_zarr_or_mlflow(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "configs" / "tiny_test.yaml"), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout
    rows = json.loads((out / "evaluation" / "results.json").read_text())["rows"]
    assert {(r["protocol"], r["model"]) for r in rows} == {(p, m) for p in ("paper", "whitebox", "transfer")
                                                           for m in ("teacher", "mid")}
    assert (out / "models" / "mid.pt").exists()
    assert not (out / "stores").exists() and not (out / "mlflow.db").exists()  # stores lived in memory
