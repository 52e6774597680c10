#!/usr/bin/env bash
# Crash survival on real data: train CE on CIFAR-100-LT for 2 epochs uninterrupted, then again with a
# SIGKILL in the middle of epoch 2 followed by --resume, and compare the two results.json files.
#   bash benchmarks/kill_resume.sh [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${LONGTAIL_DATA:-../shared/data}}
OUT=$(mktemp -d)
LT=".venv/bin/longtail"
ARGS=(train cifar100-lt/ce --epochs-scale 0.01 --data-root "$DATA" --set runtime.checkpoint_every=20 --set runtime.progress=false)
"$LT" "${ARGS[@]}" --out "$OUT/full" 2>/dev/null >/dev/null
"$LT" "${ARGS[@]}" --out "$OUT/killed" 2>/dev/null >/dev/null &
PID=$!
until .venv/bin/python - "$OUT/killed/ce/checkpoint.pt" <<'PY' 2>/dev/null
import sys, torch
ck = torch.load(sys.argv[1], weights_only=True)
sys.exit(0 if (ck["epoch"], ck["step"]) >= (1, 20) else 1)
PY
do sleep 0.5; done
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
echo "killed at: $(.venv/bin/python -c "import torch,sys; c=torch.load('$OUT/killed/ce/checkpoint.pt', weights_only=True); print('epoch', c['epoch'], 'step', c['step'])")"
test ! -e "$OUT/killed/ce/final.pt"
"$LT" "${ARGS[@]}" --out "$OUT/killed" --resume 2>/dev/null >/dev/null
.venv/bin/python - "$OUT" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/{d}/results.json"))["final"] for d in ("full", "killed"))
same = all(a[k] == b[k] for k in ("top1", "top5", "many", "medium", "few", "per_class"))
print(f"uninterrupted top1 {a['top1']}  killed+resumed top1 {b['top1']}  identical (all metrics, per class): {same}")
sys.exit(0 if same else 1)
PY
