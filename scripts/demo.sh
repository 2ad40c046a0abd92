#!/usr/bin/env bash
# `make demo`: simulate the `demo` cohort, preprocess it on a local Ray runtime, summarise.
set -euo pipefail
OUT=${1:-demo-out}
BIN=${BIN:-.venv/bin}
export RAY_DISABLE_USAGE_STATS=1

echo "== 1/3 oefray simulate: the paper's 18 subjects, demo preset"
"$BIN/oefray" simulate "$OUT/bids" --preset demo --seed 0 --force

echo "== 2/3 oefray preprocess: Ray Data, 2 workers"
"$BIN/oefray" preprocess "$OUT/bids" --out "$OUT/features" --workers 2 --force

echo "== 3/3 summary"
"$BIN/python" scripts/demo_summary.py "$OUT"
