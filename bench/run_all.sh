#!/usr/bin/env bash
# Runs every benchmark at full size, one after another (never concurrently: they measure a 2-core machine),
# writing bench/logs/<name>.log; the last line of each log is the benchmark's JSON result.
# Usage: bash bench/run_all.sh [name ...]   (default: all but end_to_end, which is a multi-hour MNIST run)
set -uo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
export MID_DATA_ROOT="${MID_DATA_ROOT:-$(cd .. && pwd)/shared/data}" RAY_AUTH_MODE=disabled
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(store_size mid_epoch streaming generation_overhead generation_scaling memory)
mkdir -p bench/logs
for name in "${names[@]}"; do
  echo "[run_all] $(date -u +%H:%M:%S) $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
  start=$(date +%s)
  python -m "bench.$name" > "bench/logs/$name.log" 2>&1
  echo "[run_all] $name rc=$? in $(( $(date +%s) - start ))s; last line: $(tail -c 300 bench/logs/$name.log | tail -1)"
done
