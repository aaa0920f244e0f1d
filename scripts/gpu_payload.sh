#!/usr/bin/env bash
# Build the folder a lent GPU machine needs besides the repository, for scripts/headline_direct.py there:
#   <dest>/data/<MNIST|FashionMNIST>/raw/*.gz   the official .gz files only (mid_core.datasets reads them directly)
#   <dest>/site/{advertorch,pyautoattack}       the attack libraries (pure Python; not installed on that machine)
#   <dest>/ckpt/*.pt                            checkpoints to continue from (optional, --ckpt PATH ...)
# Usage: bash scripts/gpu_payload.sh [--dest .gpu_payload] [--data mnist,fmnist] [--ckpt PATH ...]
# Then, with the device tool: carry the folder and run
#   export PYTHONPATH=$PWD/.gpu_payload/site MID_DATA_ROOT=$PWD/.gpu_payload/data PYTHONUNBUFFERED=1
#   python3 scripts/headline_direct.py --config configs/mnist_lenet5_gpu.yaml --out $OUT --budget-s 555
# (.gpu_payload/ is git-ignored through .git/info/exclude; the device tool carries at most 64 MiB in all.)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu_payload
datasets=mnist
ckpts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest=$2; shift 2 ;;
    --data) datasets=$2; shift 2 ;;
    --ckpt) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do ckpts+=("$1"); shift; done ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
root=${MID_DATA_ROOT:-../shared/data}
# find_spec, not import: advertorch needs mid_core's import shim on current torch
site=$(.venv/bin/python -c 'import importlib.util as u, os; print(os.path.dirname(os.path.dirname(u.find_spec("advertorch").origin)))')
mkdir -p "$dest/site" "$dest/data"
for name in ${datasets//,/ }; do
  case "$name" in
    mnist) folder=MNIST ;;
    fmnist) folder=FashionMNIST ;;
    *) echo "unknown data set $name: use mnist and/or fmnist" >&2; exit 2 ;;
  esac
  ls "$root/$folder/raw/"*.gz >/dev/null 2>&1 || { echo "no $root/$folder/raw/*.gz: set MID_DATA_ROOT" >&2; exit 2; }
  mkdir -p "$dest/data/$folder/raw"
  cp "$root/$folder/raw/"*.gz "$dest/data/$folder/raw/"
done
rm -rf "$dest/site/advertorch" "$dest/site/pyautoattack"
cp -r "$site/advertorch" "$dest/site/"
mkdir -p "$dest/site/pyautoattack"
cp "$site/pyautoattack/"*.py "$dest/site/pyautoattack/"  # not its 44 MB examples/ folder
find "$dest/site" -name __pycache__ -prune -exec rm -rf {} +
if [ ${#ckpts[@]} -gt 0 ]; then mkdir -p "$dest/ckpt"; cp "${ckpts[@]}" "$dest/ckpt/"; fi
if [ "${dest#/}" = "$dest" ]; then  # inside the repository: keep it out of git
  grep -qx "/$dest/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$dest/" >> .git/info/exclude; }
fi
size=$(du -sm "$dest" | cut -f1)
echo "built $dest: ${size} MiB (limit 64 MiB with the repository)"
[ "$size" -lt 60 ] || { echo "too large for the device tool: carry fewer data sets or checkpoints" >&2; exit 1; }
