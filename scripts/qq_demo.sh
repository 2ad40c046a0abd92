#!/usr/bin/env bash
# Issue 13's comparison on the demo cohort: the QQ inversion voxel by voxel (lambda = 0: each
# voxel's echoes and QSM alone), voxel by voxel with the whole-brain OEF prior (the mean OEF of
# each scan set to the simulation's truth), CAT (Y, v shared in each cluster, with that prior),
# and CCM, the LSTM and the floor of the same cohort; `oefray compare` prints the table.
#
#   bash scripts/qq_demo.sh [OUT] [EPOCHS]      (default qq-out, 5 epochs)
set -euo pipefail
OUT=${1:-qq-out}
EPOCHS=${2:-5}
BIN=${BIN:-.venv/bin}
URI="sqlite:///$(realpath -m "$OUT")/mlflow.db"
mkdir -p "$OUT"
run_id() { "$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['run_id'])" "$1"; }
common=(--experiment qq --tracking-uri "$URI")

echo "== simulate (demo preset, seed 0: make demo's cohort)"
"$BIN/oefray" simulate "$OUT/bids" --preset demo --seed 0 --force
echo "== qq: voxel-wise, no prior"
"$BIN/oefray" qq "$OUT/bids" --method voxel --out "$OUT/qq-voxel" "${common[@]}" \
    --results "$OUT/qq-voxel.json" 2>>"$OUT/qq.log"
echo "== qq: voxel-wise, OEF_wb from the truth (lambda = inf)"
"$BIN/oefray" qq "$OUT/bids" --method voxel --oef-wb truth --out "$OUT/qq-voxel-wb" "${common[@]}" \
    --results "$OUT/qq-voxel-wb.json" 2>>"$OUT/qq.log"
echo "== qq: CAT, OEF_wb from the truth"
"$BIN/oefray" qq "$OUT/bids" --oef-wb truth "${common[@]}" --results "$OUT/qq-cat.json" 2>>"$OUT/qq.log"
echo "== preprocess; LSTM; CCM"
"$BIN/oefray" preprocess "$OUT/bids" --out "$OUT/features" --workers 2 --force
"$BIN/oefray" train "$OUT/features" --preset small --workers 2 --epochs "$EPOCHS" "${common[@]}" \
    --results "$OUT/lstm.json" 2>>"$OUT/qq.log"
"$BIN/oefray" baseline ccm "$OUT/features" "${common[@]}" --results "$OUT/ccm.json" 2>>"$OUT/qq.log"
echo "== the paper's regime: the LSTM trained on CAT's maps of the training subjects"
"$BIN/oefray" preprocess "$OUT/bids" --out "$OUT/features-cat" --truth qq-cat --workers 2 --force
"$BIN/oefray" train "$OUT/features-cat" --preset small --workers 2 --epochs "$EPOCHS" "${common[@]}" \
    --results "$OUT/lstm-on-cat.json" 2>>"$OUT/qq.log"
echo "   ... its test RMSE above is against CAT's maps of the test subjects; against the truth:"
"$BIN/oefray" evaluate "$(run_id "$OUT/lstm-on-cat.json")" --features "$OUT/features" \
    --tracking-uri "$URI" --results "$OUT/lstm-on-cat-vs-truth.json" 2>>"$OUT/qq.log"
echo "== compare"
"$BIN/oefray" compare "$(run_id "$OUT/qq-voxel.json")" "$(run_id "$OUT/qq-voxel-wb.json")" \
    "$(run_id "$OUT/qq-cat.json")" "$(run_id "$OUT/ccm.json")" "$(run_id "$OUT/lstm.json")" \
    "$(run_id "$OUT/lstm-on-cat.json")" "$(run_id "$OUT/lstm-on-cat-vs-truth.json")" \
    --tracking-uri "$URI" --results "$OUT/compare.json"
