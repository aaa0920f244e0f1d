#!/usr/bin/env bash
# Runs one experiment of the paper reproduction end to end, stage by stage, resumable (a finished stage is
# skipped: checkpoints and complete stores are kept), and records each stage's wall time.
#   bash scripts/reproduce.sh mnist_classic [variant ...]      e.g.  bash scripts/reproduce.sh mnist_classic mid_refresh erm
# Stages: teacher stage (teacher, substitute, and AT when the evaluation lists it), pool, MID (configs/<exp>.yaml),
# each variant (configs/<exp>/<variant>.yaml), evaluation (configs/<exp>.yaml). Extra settings for every stage:
#   MID_SET="evaluation.limit=1000 mid.epochs=1" bash scripts/reproduce.sh mnist_classic
# SKIP_EVAL=1 stops before the evaluation stage (e.g. to evaluate only some protocols by hand).
# Stage times go to runs/<exp>/stage_times.tsv; the log of each stage to runs/<exp>/logs/<stage>.log.
# Long runs: nohup bash scripts/reproduce.sh mnist_classic mid_refresh > mnist.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
exp="${1:?usage: bash scripts/reproduce.sh <experiment, e.g. mnist_classic> [variant ...]}"; shift
[ -f "configs/$exp.yaml" ] || { echo "no config configs/$exp.yaml; choose one of: $(ls configs/*.yaml | xargs -n1 basename | sed 's/.yaml//' | tr '\n' ' ')" >&2; exit 2; }
for v in "$@"; do [ -f "configs/$exp/$v.yaml" ] || { echo "no variant config configs/$exp/$v.yaml" >&2; exit 2; }; done
bash scripts/setup.sh >/dev/null
source .venv/bin/activate
export MID_DATA_ROOT="${MID_DATA_ROOT:-$(cd .. && pwd)/shared/data}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"  # each job starts a private local Ray unless RAY_ADDRESS is set
sets=(); for s in ${MID_SET:-}; do sets+=(--set "$s"); done
out="runs/$exp"; [ -n "${MID_SET:-}" ] && echo "[reproduce] overrides: $MID_SET"
mkdir -p "$out/logs"
stage() {  # stage <label> <job> <config>
  local label=$1 job=$2 cfg=$3 start
  start=$(date +%s)
  echo "[reproduce] $(date -u +%H:%M:%S) $label: python jobs/$job.py --config $cfg ${sets[*]:-}"
  python "jobs/$job.py" --config "$cfg" "${sets[@]}" 2>&1 | tee "$out/logs/$label.log" | grep --line-buffered -E "^\[|error|Error" || true
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "[reproduce] $label failed; see $out/logs/$label.log (rerun the same command to resume)" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\n' "$label" "$(( $(date +%s) - start ))" "$cfg" "$(date -u +%FT%TZ)" >> "$out/stage_times.tsv"
}
stage teacher train_teacher "configs/$exp.yaml"
stage pool generate_pool "configs/$exp.yaml"
stage mid train_mid "configs/$exp.yaml"
for v in "$@"; do stage "$v" train_mid "configs/$exp/$v.yaml"; done
if [ -n "${SKIP_EVAL:-}" ]; then echo "[reproduce] SKIP_EVAL set: evaluation skipped"; exit 0; fi
stage evaluation evaluate "configs/$exp.yaml"
echo "[reproduce] done: $out/evaluation/table.md; stage times (s) in $out/stage_times.tsv"
