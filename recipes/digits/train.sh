#!/usr/bin/env bash
# Rebuilds the bundled digits consistency model (src/cmkit/assets/digits_cm) with cmkit's own CLI:
#   1. an EDM teacher (MLP, width 384 x 4 blocks, 2.0 M parameters) on the 1437 training digits;
#   2. consistency distillation (CD, N = 18, target EMA 0.95, l2) from it, exporting the 0.999 EMA;
#   3. a ternary search for the 2-step timestep, saved as the pipeline's default;
#   4. the pipeline files copied into the package, then FD-digits of teacher and model printed.
# Usage: bash recipes/digits/train.sh [RUNS_DIR]   (default runs/digits; INSTALL=0 skips step 4's copy)
# One intra-op thread: as fast as two for this small MLP, and far faster when the CPU is shared.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/digits}
PY=${PY:-.venv/bin/python}
INSTALL=${INSTALL:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ASSET=src/cmkit/assets/digits_cm

# run NAME CMD...: run a training command, then record its wall and CPU seconds in RUNS/NAME/cpu_seconds.json
timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %U %S' -o "$RUNS/$name.time" "$@"
  read -r wall user sys < "$RUNS/$name.time"
  printf '{"wall_seconds": %s, "cpu_seconds": %s}\n' "$wall" "$($PY -c "print(round($user + $sys, 2))")" > "$RUNS/$name/cpu_seconds.json"
  echo "$name: $(cat "$RUNS/$name/cpu_seconds.json")"
}

mkdir -p "$RUNS"
timed teacher $PY -m cmkit train --config recipes/digits/teacher.json --output "$RUNS/teacher"
timed cd $PY -m cmkit train --config recipes/digits/cd.json --teacher "$RUNS/teacher" --output "$RUNS/cd"
# tuned on seed 1 (cmkit eval reports seed 0), 5 draws of 360 per candidate
$PY -m cmkit tune-timesteps --model "$RUNS/cd" --coarse 9 --num-samples 1800 --seed 1

if [ "$INSTALL" = 1 ]; then
  rm -rf "$ASSET"
  mkdir -p "$ASSET"
  cp -r "$RUNS/cd/model_index.json" "$RUNS/cd/unet" "$RUNS/cd/scheduler" "$RUNS/cd/training_info.json" \
    "$RUNS/cd/cpu_seconds.json" "$ASSET/"
  echo "installed the pipeline into $ASSET ($(du -sh "$ASSET" | cut -f1))"
fi

$PY -m cmkit eval --model "$RUNS/teacher"
$PY -m cmkit eval --model "$RUNS/cd"
