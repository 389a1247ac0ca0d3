#!/usr/bin/env bash
# The digits again, with a scaled-down DDPM++ UNet (EDM's SongUNet, `--model ddpmpp`) trained through the streaming
# image path instead of the in-memory `--data digits`:
#   0. the 1437 training digits written as PNGs, one folder per class (export_digits.py), then decoded once by
#      `cmkit data prepare` into a memory-mapped directory, read with `--data prepared:...` and one loader worker;
#   1. an EDM teacher (32 channels, multipliers [1, 2], 1 block per level, attention at 4x4, dropout 0.1: 0.75 M
#      parameters), class-conditional;
#   2. consistency distillation (CD, N = 18, target EMA 0.95, l2) and easy consistency tuning (ECT) from it;
#   3. the 2-step timestep of CD and ECT tuned as for the MLP rows;
#   4. (stage `tcd`, not in the default list) trajectory consistency distillation from the same teacher.
# FD-digits and the sample grids: python benchmarks/quality_digits.py --grids docs/images
# Usage: bash recipes/digits/unet/train.sh [RUNS_DIR] [STAGE...]   (default runs/digits/unet; data teacher cd ect)
# One intra-op thread per process, as in recipes/digits/train.sh.
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${1:-runs/digits/unet}
shift || true
STAGES=${*:-data teacher cd ect}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RECIPE=recipes/digits/unet
# --data moves the config's data to this run's prepared copy (the config's class labels and workers stay; repeated here for clarity)
DATA=(--data "prepared:$RUNS/prepared" --class-labels --workers 1)

# timed NAME CMD...: run a training command, then record its wall and CPU seconds in RUNS/NAME/cpu_seconds.json
timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %U %S' -o "$RUNS/$name.time" "$@"
  read -r wall user sys < "$RUNS/$name.time"
  printf '{"wall_seconds": %s, "cpu_seconds": %s}\n' "$wall" "$($PY -c "print(round($user + $sys, 2))")" > "$RUNS/$name/cpu_seconds.json"
  echo "$name: $(cat "$RUNS/$name/cpu_seconds.json")"
}

mkdir -p "$RUNS"
for stage in $STAGES; do
  case $stage in
    data)
      [ -d "$RUNS/png" ] || $PY $RECIPE/export_digits.py "$RUNS/png"
      [ -d "$RUNS/prepared" ] || $PY -m cmkit data prepare "$RUNS/png" "$RUNS/prepared" --resolution 8 --channels 1 \
        --workers 1 --no-progress ;;
    teacher)
      timed teacher $PY -m cmkit train --config $RECIPE/teacher.json "${DATA[@]}" --output "$RUNS/teacher" ;;
    cd|ect)
      timed "$stage" $PY -m cmkit train --config "$RECIPE/$stage.json" "${DATA[@]}" \
        --teacher "$RUNS/teacher" --output "$RUNS/$stage"
      # tuned on seed 1 (benchmarks/quality_digits.py reports seed 0), 5 draws of 360 per candidate
      $PY -m cmkit tune-timesteps --model "$RUNS/$stage" --coarse 9 --num-samples 1800 --seed 1 ;;
    tcd)  # TCD from the same teacher, the UNet told its target time (benchmarks/quality_tcd.py --unet)
      timed tcd $PY -m cmkit train --config $RECIPE/tcd.json "${DATA[@]}" --teacher "$RUNS/teacher" --output "$RUNS/tcd" ;;
    *) echo "unknown stage $stage (data, teacher, cd, ect, tcd)" >&2; exit 2 ;;
  esac
done
