#!/usr/bin/env bash
# The CPU comparison tables of CBD and BalanceAux on CIFAR-100-LT IF=100, one run folder per recipe,
# each collected into results/cpu/cifar100-lt-if100/. Usage: bash benchmarks/cpu_tables.sh [cbd|balance_aux|all] [SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-all}
SCALE=${2:-0.05}
DATA=${LONGTAIL_DATA:-../shared/data}
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184
LT=.venv/bin/longtail
run() {  # recipe, name, extra args...
  local recipe=$1 name=$2; shift 2
  local out=runs/$name-if100-x$SCALE
  local cmd="$LT train $recipe --epochs-scale $SCALE --data-root $DATA --out $out $*"
  echo "== $cmd"
  $cmd --set runtime.progress=false ${RESUME:+--resume}
  .venv/bin/python benchmarks/collect.py "$out" "results/cpu/cifar100-lt-if100/$name-x$SCALE" --command "$cmd"
}
if [ "$WHICH" = cbd ] || [ "$WHICH" = all ]; then
  # cRT keeps its 10 epochs (it only trains a linear head on frozen features, and 1 epoch under-trains it).
  run cifar100-lt/cbd cbd --set stages.crt.epochs=$(python3 -c "print(round(10 / $SCALE))")
fi
if [ "$WHICH" = balance_aux ] || [ "$WHICH" = all ]; then
  for r in balance_aux_rrs balance_aux_cbs ftrrs_cbs balance_aux_noss balance_aux; do
    run cifar100-lt/$r $r
  done
fi
