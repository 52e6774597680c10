#!/usr/bin/env bash
# Run full-schedule recipes one after another, each from a clean worktree of the newest commit that changed
# code when the queue started, so code edited beside a long run never marks its provenance dirty:
#   bash scripts/full_queue.sh 0 cifar100-lt/ssd cifar100-lt/balance_aux cifar100-lt/lws@50 ...
# (recipe@IF sets the imbalance factor, default 100). recipe+OTHER also passes --reuse with OTHER's run of the
# same seed and IF, so the stages they share are copied, not trained again: cifar100-lt/strong_distill+strong. Each run writes (and, run again from any clone, continues
# with --resume) results/full/<dataset>-if<IF>/<recipe>-s<seed>/ in this checkout.
# One training at a time: two on these 2 cores run 6-8x slower, not 2x.
# This file is replaced (new inode), never edited in place, while a queue may be reading it.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=$1; shift
bash scripts/install.sh >/dev/null
repo=$(pwd)
# The newest commit that changed code, not a state commit of results/full: commit_full_runs.sh amends those,
# and a run's provenance must name a commit that stays in the history.
commit=$(git log -1 --format=%H -- . ':(exclude)results/full')
wt=$(dirname "$repo")/longtail-run-${commit:0:12}
[ -d "$wt" ] || git worktree add --detach "$wt" "$commit" >/dev/null
export LONGTAIL_DATA=${LONGTAIL_DATA:-$(dirname "$repo")/shared/data}
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184
export PYTHONPATH=$wt   # the worktree's code, not this checkout's editable install
for item in "$@"; do
  recipe=${item%@*}; imb=100; [ "$item" != "$recipe" ] && imb=${item##*@}
  reuse=(); if [[ $recipe == *+* ]]; then other=${recipe##*+}; recipe=${recipe%+*}; fi
  out=$repo/results/full/${recipe%%/*}-if${imb}/${recipe##*/}-s${seed}
  [ -n "${other:-}" ] && reuse=(--reuse "$repo/results/full/${recipe%%/*}-if${imb}/${other}-s${seed}"); other=
  resume=(); [ -e "$out/recipe.yaml" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $recipe (IF $imb) at ${commit:0:12} -> $out"
  (cd "$wt" && nice -n 10 "$repo/.venv/bin/python" -m longtail train "$recipe" --out "$out" "${resume[@]}" \
      --set runtime.seed="$seed" --set data.imbalance="$imb" --set runtime.tensorboard=false "${reuse[@]}")
  echo "$(date -u +%FT%TZ) done $recipe"
done
