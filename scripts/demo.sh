#!/usr/bin/env bash
# `make demo`: simulate the `demo` cohort, preprocess it on a local Ray runtime, train the small
# LSTM on Ray Train (2 workers) tracked in MLflow, and print the Table 1 summary.
set -euo pipefail
OUT=${1:-demo-out}
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-5}
export RAY_DISABLE_USAGE_STATS=1 TF_CPP_MIN_LOG_LEVEL=2

echo "== 1/4 oefray simulate: the paper's 18 subjects, demo preset"
"$BIN/oefray" simulate "$OUT/bids" --preset demo --seed 0 --force

echo "== 2/4 oefray preprocess: Ray Data, 2 workers"
"$BIN/oefray" preprocess "$OUT/bids" --out "$OUT/features" --workers 2 --force

echo "== 3/4 features"
"$BIN/python" scripts/demo_summary.py "$OUT"

echo "== 4/4 oefray train: small preset, $EPOCHS epochs, Ray Train with 2 workers, MLflow (Ray/TensorFlow logs in $OUT/train.log)"
"$BIN/oefray" train "$OUT/features" --preset small --workers 2 --epochs "$EPOCHS" --experiment demo \
    --results "$OUT/train-results.json" 2>"$OUT/train.log" || { tail -20 "$OUT/train.log"; exit 1; }
