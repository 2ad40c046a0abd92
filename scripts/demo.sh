#!/usr/bin/env bash
# `make demo`: simulate the `demo` cohort, preprocess it on a local Ray runtime, train the small
# LSTM on Ray Train (2 workers) tracked in MLflow, run the CCM baseline on the same split, and
# repeat the training over 3 seeds on Ray Tune (the paper's protocol, smaller), and compare all of
# it with the floor: the demo cohort's Table 2/3.
set -euo pipefail
OUT=${1:-demo-out}
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-5}
REPEATS=${REPEATS:-3}
export RAY_DISABLE_USAGE_STATS=1 TF_CPP_MIN_LOG_LEVEL=2

echo "== 1/7 oefray simulate: the paper's 18 subjects, demo preset"
"$BIN/oefray" simulate "$OUT/bids" --preset demo --seed 0 --force

echo "== 2/7 oefray preprocess: Ray Data, 2 workers"
"$BIN/oefray" preprocess "$OUT/bids" --out "$OUT/features" --workers 2 --force

echo "== 3/7 features"
"$BIN/python" scripts/demo_summary.py "$OUT"

echo "== 4/7 oefray train: small preset, $EPOCHS epochs, Ray Train with 2 workers, MLflow (Ray/TensorFlow logs in $OUT/train.log)"
"$BIN/oefray" train "$OUT/features" --preset small --workers 2 --epochs "$EPOCHS" --experiment demo \
    --results "$OUT/train-results.json" 2>"$OUT/train.log" || { tail -20 "$OUT/train.log"; exit 1; }

echo "== 5/7 oefray baseline ccm: the clustering baseline on the same split"
"$BIN/oefray" baseline ccm "$OUT/features" --experiment demo --results "$OUT/ccm-results.json" 2>>"$OUT/train.log"

echo "== 6/7 oefray tune --repeats $REPEATS: the same training, $REPEATS seeds, on Ray Tune (1 worker per repeat)"
"$BIN/oefray" tune "$OUT/features" --repeats "$REPEATS" --preset small --workers-per-trial 1 \
    --epochs "$EPOCHS" --experiment demo --results "$OUT/tune-results.json" 2>>"$OUT/train.log" \
    || { tail -20 "$OUT/train.log"; exit 1; }

run_id() { "$BIN/python" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("parent_run_id") or d["run_id"])' "$1"; }
echo "== 7/7 oefray compare: Table 2/3 of the demo cohort, LSTM (mean ± std over seeds) vs CCM vs the floor (test RMSE, all test voxels)"
"$BIN/oefray" compare "$(run_id "$OUT/tune-results.json")" "$(run_id "$OUT/train-results.json")" "$(run_id "$OUT/ccm-results.json")"
echo "paper (patient data): OEF RMSE 5.23 ± 0.035 % (LSTM, 5 seeds) vs 5.35 % (CCM)"
