#!/usr/bin/env bash
# The whole suite, five times in a row, while two processes each keep a CPU busy:
# a test that fails by chance under load fails here.  Stops at the first failed run.
#   bash tests/stress.sh [runs] [burners]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
burners=${2:-2}

pids=()
stop_burners() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_burners EXIT
for _ in $(seq "$burners"); do
    timeout 3600 sh -c 'while :; do :; done' &  # bounded, even if this script is killed
    pids+=("$!")
done

for run in $(seq "$runs"); do
    started=$SECONDS
    timeout 1200 .venv/bin/python -m pytest
    echo "== run $run of $runs passed in $((SECONDS - started)) s, beside $burners CPU burners"
done
