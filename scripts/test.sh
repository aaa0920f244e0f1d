#!/usr/bin/env bash
# Set up (if needed) and run the default test suite (slow tests excluded; add `-m slow` for those), printing the
# 15 slowest tests. Any pytest arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_browser.sh   # headless Chromium for the MLflow UI test (a no-op when present or without apt)
export MID_DATA_ROOT=${MID_DATA_ROOT:-$(cd .. && pwd)/shared/data}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}   # tests start private local clusters only
export RAY_USAGE_STATS_ENABLED=0
# private single-node clusters: no node is ever preempted, and a finished Train run is noticed sooner
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=${RAY_TRAIN_ENABLE_PREEMPTION_WATCHER:-0}
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=${RAY_TRAIN_HEALTH_CHECK_INTERVAL_S:-0.5}
exec .venv/bin/python -m pytest --durations=15 "$@"
