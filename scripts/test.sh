#!/usr/bin/env bash
# Set up (if needed) and run the default test suite (slow tests excluded; add `-m slow` for those), printing the
# 15 slowest tests. Any pytest arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MID_DATA_ROOT=${MID_DATA_ROOT:-$(cd .. && pwd)/shared/data}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}   # tests start private local clusters only
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest --durations=15 "$@"
