#!/usr/bin/env bash
# iCT from scratch for 20000 steps (about 13 CPU-minutes on one thread), checkpointed every 2500 steps, and
# FD-digits of every checkpoint at 1 and 2 steps: the learning curve in docs/quality.md ("iCT for longer").
# The curriculum N(k) and the cosine decay follow K = 20000 throughout; each point is this run part-way (its
# exported 0.999 EMA then), not a shorter run (whose faster curriculum gives other results, e.g. the 3000-step row).
# Usage: bash recipes/digits/ict_curve.sh [RUNS_DIR]   (default runs/digits; writes RUNS_DIR/ict20k and ict20k-STEP)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/digits}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN=$RUNS/ict20k

mkdir -p "$RUNS"
/usr/bin/time -f '%e %U %S' -o "$RUN.time" $PY -m cmkit train --config recipes/digits/ict.json --steps 20000 \
  --save-every 2500 --keep-checkpoints 0 --sample-every 5000 --log-every 500 --output "$RUN"
read -r wall user sys < "$RUN.time"
echo "ict20k: wall $wall s, CPU $($PY -c "print(round($user + $sys, 2))") s"
for step in 2500 5000 7500 10000 12500 15000 17500 20000; do
  $PY recipes/digits/export_checkpoint.py "$RUN" $step "$RUN-$step/ict"
  $PY -m cmkit tune-timesteps --model "$RUN-$step/ict" --coarse 9 --num-samples 1800 --seed 1
  $PY benchmarks/quality_digits.py --runs "$RUN-$step" --methods ict
done
