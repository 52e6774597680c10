#!/usr/bin/env bash
# `longtail predict` images/s on a generated long-tailed folder (1,000+ images of mixed sizes), with a model
# trained on it for one epoch (accuracy is not the point): writes results/predict-<device>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
made=("longtail data example PHOTOS --max-per-class 300 --imbalance 5"
      "longtail train folder/ce --data-root PHOTOS --out RUN --epochs-scale 0.05 --set runtime.progress=false")
.venv/bin/longtail data example "$work/photos" --max-per-class 300 --imbalance 5
.venv/bin/longtail train folder/ce --data-root "$work/photos" --out "$work/run" --epochs-scale 0.05 --set runtime.progress=false > /dev/null
rec="results/predict-${1:-cpu}.json"
.venv/bin/longtail predict "$work/run/ce/final.pt" "$work/photos" --out "$work/preds.csv" --timing "$rec" "${@:2}"
# The model and images lived in a temporary folder: the record keeps how they were made (the model's own
# description and sha256 are in "model").
.venv/bin/python - "$rec" "${made[@]}" <<'PY'
import json, sys
rec = json.load(open(sys.argv[1]))
rec["made_by"] = sys.argv[2:]
open(sys.argv[1], "w").write(json.dumps(rec, indent=1))
PY
cat "$rec"
