#!/usr/bin/env bash
# Install (if needed), then train CE on CIFAR-100-LT (IF=100) for 10 epochs (1/20 of the paper's schedule),
# then re-balance it with NCM and post-hoc logit adjustment (no training; chosen on validation, recipes/cifar100-lt/demo.yaml),
# and print the three rows side by side:
# overall / many / medium / few accuracy. Then draw the per-class figure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export LONGTAIL_DATA=${LONGTAIL_DATA:-$(cd .. && pwd)/shared/data}
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/longtail train cifar100-lt/demo --epochs-scale 0.05 --out "$OUT" "$@"
.venv/bin/longtail report "$OUT" --out "$OUT/report" > /dev/null
echo "per-class accuracy against training frequency: $OUT/report/per_class_accuracy.png"
