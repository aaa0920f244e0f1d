#!/usr/bin/env bash
# Set up (pinned .venv), start a local Ray head, and `ray job submit` the whole experiment (`mid run`) on the
# embedded digits data set: teacher, adversarial pool, MID, evaluation under the three protocols.
# Usage: bash scripts/quickstart.sh [CONFIG]   (default configs/digits_quickstart.yaml)
#
# Ray 2.60 token authentication: a token is generated once (~/.ray/auth_token) and RAY_AUTH_MODE=token is
# exported, so `ray start`, `ray job submit` and the dashboard agree. The dashboard and the MLflow store stay on
# 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/digits_quickstart.yaml}
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export MID_DATA_ROOT=${MID_DATA_ROOT:-$(cd .. && pwd)/shared/data}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_USAGE_STATS_ENABLED=0
if [ "$RAY_AUTH_MODE" = token ]; then ray get-auth-token --generate >/dev/null; fi

started_here=0
if ! ray status >/dev/null 2>&1; then
  echo "[quickstart] starting a local Ray head (dashboard on 127.0.0.1:8265)"
  ray start --head --dashboard-host=127.0.0.1 --num-cpus="$(( $(nproc) * 2 ))" --disable-usage-stats >/dev/null
  started_here=1
fi
cleanup() { if [ "$started_here" = 1 ]; then ray stop >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
export RAY_ADDRESS=http://127.0.0.1:8265

echo "[quickstart] ray job submit -- mid run --config $CONFIG --executor ray"
ray job submit -- bash -c "cd '$PWD' && MID_DATA_ROOT='$MID_DATA_ROOT' mid run --config '$CONFIG' --executor ray"

out=$(python -c "from pipeline.config import load_config; c = load_config('$CONFIG'); print(c.output_dir + '|' + c.tracking_uri())")
IFS='|' read -r outdir uri <<< "$out"
cat <<MSG

[quickstart] done.
  robustness table : $outdir/evaluation/table.md (also table.csv, results.json, heatmap.png)
  models           : $outdir/models/
  MLflow UI        : .venv/bin/mlflow ui --backend-store-uri '$uri' --host 127.0.0.1 --port 5000
MSG
sed -n '/^| protocol/,/^$/p' "$outdir/evaluation/table.md"
