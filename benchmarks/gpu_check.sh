#!/usr/bin/env bash
# The prepared device check (issue 30): one command for one device call of at most 9 minutes, writing each
# result as soon as it has it, under $OUT (the device tool's folder) or results/gpu-check/.
#   bash benchmarks/gpu_check.sh              # on the GPU machine: device cuda, the CIFAR-100-LT pack
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on this CPU at toy sizes (CI runs it)
# Steps, in order: 1 host syncs per step (ce, SSD stage I, strong); 2 the nvJPEG corruption harness
# (benchmarks/nvjpeg_race.py); 3 bench throughput (the loop against the model alone); 4 cifar100-lt/ce at full
# schedule (against the committed CPU row; SSD too in the dry run only); 5 bench data. Each step has its own time
# budget (540 s in all on the device), so one that hangs cannot take the rest with it.
# Packages: the GPU image has torch, torchvision, numpy, pyyaml, pillow and safetensors (KINDS.md's list), all
# that longtail needs; wheels for anything missing travel in .whl/ (gitignored) and are installed first.
# Data: benchmarks/data/cifar100-lt-if100-pack.tar.xz (benchmarks/make_gpu_pack.py; carried to the device
# with the tracked tree, 64 MiB in all), unpacked into a data root on the machine.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0; [ "${1:-}" = "--dry-run" ] && dry=1
out=${OUT:-results/gpu-check}; mkdir -p "$out"
py=${PYTHON:-python}
[ -x .venv/bin/python ] && py=.venv/bin/python
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$out/gpu_check.log"; }
failed=0
# Each step under its own budget (a dry run's are x4: a busy CI box, and no device clock to save).
run() { local budget=$1; shift; [ $dry = 1 ] && budget=$((budget * 4)); log "start ($budget s): $*"
        timeout "$budget" "$@" >>"$out/gpu_check.log" 2>&1; local rc=$?; log "rc=$rc: $*"; [ $rc = 0 ] || failed=$((failed + 1)); return 0; }

if [ $dry = 1 ]; then
  dev=cpu; data=(--set data.dataset=synthetic --set model.backbone=resnet20); scale=(--epochs-scale 0.005); tq=(--quick --synthetic --batch 16)
else
  dev=cuda; root=$(mktemp -d); tar -xJf benchmarks/data/cifar100-lt-if100-pack.tar.xz -C "$root"
  export LONGTAIL_DATA=$root; data=(); scale=(); tq=()
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$py" -c "import torch, numpy, yaml, PIL, safetensors" 2>>"$out/gpu_check.log" || log "missing a package longtail needs (see above)"
"$py" - <<PY >"$out/env.json" 2>&1
import json, platform, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
                  "dry_run": bool($dry)}))
PY
log "env: $(cat "$out/env.json")"

# 1. host syncs per training step
run 90 "$py" - "$dev" "$out" "$dry" <<'PY'
import json, sys, tempfile
from pathlib import Path
from longtail.bench.syncs import CHECKED, count_syncs, one_epoch
from longtail.data.synthetic import synthetic_bundle
dev, out, dry = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
data = synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16) if dry else None
res = {}
for name, stage in CHECKED:
    r = one_epoch(name, stage, dev, toy=dry)
    with tempfile.TemporaryDirectory() as d:
        per_step, host = count_syncs(r, data, Path(d))
    res[f"{name}:{stage}"] = {"steps": len(per_step), "syncs_per_step": per_step, "host_tensors_per_step": host}
    (out / f"syncs-{dev}.json").write_text(json.dumps(res, indent=1))
print(json.dumps({k: sum(v["syncs_per_step"]) for k, v in res.items()}))
PY

# 2. nvJPEG on the look-ahead thread: corrupted rows with the old shared stream, and with the side stream
run 45 "$py" benchmarks/nvjpeg_race.py --out "$out/nvjpeg-race-$dev.json" --iterations 200

# 3. throughput: the loop against the model alone
run 120 "$py" -m longtail bench throughput --device "$dev" --results "$out" "${tq[@]}"

# 4. full-schedule CE, against the committed CPU row. The budgets sum to 540 s (9 minutes) on the device, so
# SSD's four stages do not fit beside it there; the dry run trains them too, so the script stays tested.
run 240 "$py" -m longtail train cifar100-lt/ce --device "$dev" --out "$out/ce-s0" "${data[@]}" "${scale[@]}" --set runtime.tensorboard=false
[ $dry = 1 ] && run 60 "$py" -m longtail train cifar100-lt/ssd --device "$dev" --out "$out/ssd-s0" "${data[@]}" "${scale[@]}" --set runtime.tensorboard=false

# 5. file-image pipeline with the device decoder
if [ $dry = 1 ]; then bd=(--images 64 --generate 64 --steps 1); else bd=(--images 64 --generate 64); fi
run 45 "$py" -m longtail bench data --device "$dev" --results "$out" "${bd[@]}"
log "done: $failed step(s) failed"
[ $failed = 0 ]
