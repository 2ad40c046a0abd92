#!/usr/bin/env bash
# `make demo`: simulate the `demo` cohort, preprocess it on a local Ray runtime, train the small
# LSTM on Ray Train (2 workers) tracked in MLflow, run the CCM baseline on the same split, and
# compare both with the floor.
set -euo pipefail
OUT=${1:-demo-out}
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-5}
export RAY_DISABLE_USAGE_STATS=1 TF_CPP_MIN_LOG_LEVEL=2

echo "== 1/6 oefray simulate: the paper's 18 subjects, demo preset"
"$BIN/oefray" simulate "$OUT/bids" --preset demo --seed 0 --force

echo "== 2/6 oefray preprocess: Ray Data, 2 workers"
"$BIN/oefray" preprocess "$OUT/bids" --out "$OUT/features" --workers 2 --force

echo "== 3/6 features"
"$BIN/python" scripts/demo_summary.py "$OUT"

echo "== 4/6 oefray train: small preset, $EPOCHS epochs, Ray Train with 2 workers, MLflow (Ray/TensorFlow logs in $OUT/train.log)"
"$BIN/oefray" train "$OUT/features" --preset small --workers 2 --epochs "$EPOCHS" --experiment demo \
    --results "$OUT/train-results.json" 2>"$OUT/train.log" || { tail -20 "$OUT/train.log"; exit 1; }

echo "== 5/6 oefray baseline ccm: the clustering baseline on the same split"
"$BIN/oefray" baseline ccm "$OUT/features" --experiment demo --results "$OUT/ccm-results.json" 2>>"$OUT/train.log"

echo "== 6/6 oefray compare: LSTM, CCM and the floor (test RMSE, all test voxels)"
"$BIN/oefray" compare "$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$OUT/train-results.json")" \
    "$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$OUT/ccm-results.json")"
