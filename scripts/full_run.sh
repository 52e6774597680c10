#!/usr/bin/env bash
# Start or continue a full-schedule run whose resumable state lives in the repo:
#   bash scripts/full_run.sh cifar100-lt/ssd 0
# writes results/full/cifar100-lt-if100/ssd-s0/ and, run again (a fresh clone included), continues it
# with --resume at the last committed checkpoint. TensorBoard is off to keep the folder small.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=$1; seed=${2:-0}; imb=${3:-100}
bash scripts/install.sh
export LONGTAIL_DATA=${LONGTAIL_DATA:-$(cd .. && pwd)/shared/data}
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184
out=results/full/${recipe%%/*}-if${imb}/${recipe##*/}-s${seed}
resume=(); [ -e "$out/recipe.yaml" ] && resume=(--resume)
exec nice -n 10 .venv/bin/longtail train "$recipe" --out "$out" "${resume[@]}" \
  --set runtime.seed="$seed" --set data.imbalance="$imb" --set runtime.tensorboard=false
