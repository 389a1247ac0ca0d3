#!/usr/bin/env bash
# The other rows of the digits quality report (benchmarks/quality_digits.py): iCT from scratch, ECT from the
# recipe's EDM teacher (run recipes/digits/train.sh first), and CT from scratch; same MLP as the bundled model.
# CT uses mu0 = 0.1: the paper's 0.95 moves the target too little in 3000 steps and collapses (docs/training.md,
# "CT's target budget rule").
# sCT / sCD (sCM, TrigFlow; `sct scd`, not in the default list): steps set so their CPU seconds match iCT's / ECT's;
# their 2-step time is searched by benchmarks/quality_digits.py (cmkit tune-timesteps does not search TrigFlow times).
# TCD (`tcd`, not in the default list): from the same teacher, evaluated by benchmarks/quality_tcd.py (NFE x gamma).
# Usage: bash recipes/digits/baselines.sh [RUNS_DIR] [METHOD...]   (default runs/digits; ict ect ct)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/digits}
shift || true
METHODS=${*:-ict ect ct}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

for method in $METHODS; do
  teacher=()
  case $method in ect|scd|tcd) teacher=(--teacher "$RUNS/teacher") ;; esac
  /usr/bin/time -f '%e %U %S' -o "$RUNS/$method.time" \
    $PY -m cmkit train --config "recipes/digits/$method.json" "${teacher[@]}" --output "$RUNS/$method"
  read -r wall user sys < "$RUNS/$method.time"
  printf '{"wall_seconds": %s, "cpu_seconds": %s}\n' "$wall" "$($PY -c "print(round($user + $sys, 2))")" > "$RUNS/$method/cpu_seconds.json"
  case $method in sct|scd|tcd) ;; *) $PY -m cmkit tune-timesteps --model "$RUNS/$method" --coarse 9 --num-samples 1800 --seed 1 ;; esac
done
