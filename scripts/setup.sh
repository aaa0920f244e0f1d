#!/usr/bin/env bash
# Create .venv and install the pinned dependencies and this project (editable). Idempotent: reruns
# only when pyproject.toml changed. torch 2.14.1 / torchvision 0.29.1 come from local wheels where
# available (CI machines); elsewhere pip downloads them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
echo "[setup] installing pinned dependencies (first time: a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, ray, zarr, mlflow, pyautoattack, mid_core.attacks, storage_schemas, pipeline; print('[setup] ok: torch', torch.__version__, 'ray', ray.__version__, 'zarr', zarr.__version__, 'mlflow', mlflow.__version__)"
echo "$want" > "$stamp"
