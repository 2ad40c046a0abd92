#!/usr/bin/env bash
# Issue 12's measurements on the demo cohort: the small LSTM (as `make demo` trains it), the LSTM
# with lesion samples oversampled, the patch model, and CCM, each evaluated per tissue class and
# by lesion contrast beside the floor and the truth; `oefray compare` prints the table.
#
#   bash scripts/regions.sh [OUT] [EPOCHS]      (default regions-out, 5 epochs)
set -euo pipefail
OUT=${1:-regions-out}
EPOCHS=${2:-5}
BIN=${BIN:-.venv/bin}
URI="sqlite:///$(realpath -m "$OUT")/mlflow.db"
mkdir -p "$OUT"
run_id() { "$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['run_id'])" "$1"; }

echo "== simulate (demo preset, seed 0: make demo's cohort, now with its segmentation)"
"$BIN/oefray" simulate "$OUT/bids" --preset demo --seed 0 --force
echo "== preprocess"
"$BIN/oefray" preprocess "$OUT/bids" --out "$OUT/features" --workers 2 --force
common=(--preset small --workers 2 --epochs "$EPOCHS" --experiment regions --tracking-uri "$URI")
echo "== train: LSTM (the paper's network, small preset)"
"$BIN/oefray" train "$OUT/features" "${common[@]}" --results "$OUT/lstm.json" 2>>"$OUT/train.log"
echo "== train: LSTM, lesion samples x10"
"$BIN/oefray" train "$OUT/features" "${common[@]}" --oversample 10 --results "$OUT/lstm-os.json" 2>>"$OUT/train.log"
echo "== train: patch model (3x3x3)"
"$BIN/oefray" train "$OUT/features" "${common[@]}" --model patch --results "$OUT/patch.json" 2>>"$OUT/train.log"
echo "== train: patch model, lesion samples x10"
"$BIN/oefray" train "$OUT/features" "${common[@]}" --model patch --oversample 10 --results "$OUT/patch-os.json" 2>>"$OUT/train.log"
echo "== baseline ccm"
"$BIN/oefray" baseline ccm "$OUT/features" --experiment regions --tracking-uri "$URI" --results "$OUT/ccm.json" 2>>"$OUT/train.log"
echo "== compare"
"$BIN/oefray" compare "$(run_id "$OUT/lstm.json")" "$(run_id "$OUT/lstm-os.json")" \
    "$(run_id "$OUT/patch.json")" "$(run_id "$OUT/patch-os.json")" "$(run_id "$OUT/ccm.json")" \
    --tracking-uri "$URI" --results "$OUT/compare.json"
