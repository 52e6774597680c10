#!/usr/bin/env bash
# The prepared device check (issue 30): one command for one device call of at most 9 minutes, writing each
# result as soon as it has it, under $OUT (the device tool's folder) or results/gpu-check/.
#   bash benchmarks/gpu_check.sh              # on the GPU machine: device cuda, the CIFAR-100-LT pack
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on this CPU at toy sizes (CI runs it)
# Steps, in order: 1 host syncs per step (ce, SSD stage I, strong; one epoch each, 85 steps, more than the
# issue's 30); 2 the nvJPEG corruption harness (benchmarks/nvjpeg_race.py); 3 bench throughput (the loop against
# the model alone); 4 cifar100-lt/ce at full schedule, against the committed CPU row; 5 bench data; 6 cifar100-lt/ssd
# in whatever time is left before the deadline (570 s from the start), its finished stages and rates recorded even
# when it is cut off. Each step has its own time budget, so one that hangs cannot take the rest with it.
# Results: $OUT/<what>-gpu.json (-dry.json for --dry-run), each with provenance (benchmarks/gpu_stamp.py, after
# every step): commit it as results/<what>-gpu.json. Set LONGTAIL_COMMIT=<the commit> in the device command: the
# tree travels there without .git.
# Packages: the GPU image has torch, torchvision, numpy, pyyaml, pillow and safetensors (KINDS.md's list), all
# that longtail needs; wheels for anything missing travel in .whl/ (gitignored) and are installed first.
# Data: benchmarks/data/cifar100-lt-if100-pack.tar.xz (benchmarks/make_gpu_pack.py; carried to the device
# with the tracked tree, 64 MiB in all), unpacked into a data root on the machine.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0; [ "${1:-}" = "--dry-run" ] && dry=1
tag=gpu; [ $dry = 1 ] && tag=dry
t0=$(date +%s); deadline=570  # seconds: the device call's limit is 600
out=${OUT:-results/gpu-check}; mkdir -p "$out"
py=${PYTHON:-python}
[ -x .venv/bin/python ] && py=.venv/bin/python
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$out/gpu_check.log"; }
failed=0
# Each step under its own budget (a dry run's are x4: a busy CI box, and no device clock to save).
run() { local budget=$1; shift; [ $dry = 1 ] && budget=$((budget * 4)); log "start ($budget s): $*"
        timeout "$budget" "$@" >>"$out/gpu_check.log" 2>&1; local rc=$?; log "rc=$rc: $*"; [ $rc = 0 ] || failed=$((failed + 1))
        "$py" benchmarks/gpu_stamp.py "$out" "$tag" >>"$out/gpu_check.log" 2>&1; return 0; }
left() { echo $((deadline - ($(date +%s) - t0))); }

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
run 90 "$py" - "$dev" "$out" "$dry" "$tag" <<'PY'
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
    (out / f"syncs-{sys.argv[4]}.json").write_text(json.dumps(res, indent=1))
print(json.dumps({k: sum(v["syncs_per_step"]) for k, v in res.items()}))
PY

# 2. nvJPEG on the look-ahead thread: corrupted rows with the old shared stream, and with the side stream
run 45 "$py" benchmarks/nvjpeg_race.py --out "$out/nvjpeg-race-$tag.json" --iterations 200

# 3. throughput: the loop against the model alone
run 120 "$py" -m longtail bench throughput --device "$dev" --results "$out" "${tq[@]}"

# 4. full-schedule CE, against the committed CPU row (decoupling-s0's CE stage: the same recipe and seed)
run 240 "$py" -m longtail train cifar100-lt/ce --device "$dev" --out "$out/ce-s0" "${data[@]}" "${scale[@]}" --set runtime.tensorboard=false
compare() {  # $1: recipe name, $2: the run folder, $3: the committed CPU run -> $out/$1-$tag.json
  "$py" - "$2" "$3" "$out/$1-$tag.json" <<'PY' >>"$out/gpu_check.log" 2>&1
import json, sys
from pathlib import Path
run, cpu, dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
keys = ("top1", "many", "medium", "few", "wall_seconds_total", "train_img_per_s_last_segment")
def rows(res):
    return {n: {k: m.get(k) for k in keys} for n, m in res["stages"].items()}
here = {}
if (run / "results.json").exists():
    here = rows(json.loads((run / "results.json").read_text()))
for d in sorted(p for p in run.glob("*") if p.is_dir() and p.name not in here):  # a stage cut off: its rate so far
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()] if (d / "metrics.jsonl").exists() else []
    steps = [l for l in lines if "loss" in l]
    if len(steps) > 1:
        here[d.name] = {"unfinished_at_step": steps[-1]["step"], "steps_per_s": (steps[-1]["step"] - steps[0]["step"]) / (steps[-1]["time"] - steps[0]["time"])}
cpu_rows = rows(json.loads((cpu / "results.json").read_text())) if (cpu / "results.json").exists() else {}
diff = {n: round(r["top1"] - cpu_rows[n]["top1"], 2) for n, r in here.items() if r.get("top1") is not None and n in cpu_rows}
dest.write_text(json.dumps({"run": str(run), "stages": here, "cpu_record": str(cpu), "cpu_stages": cpu_rows, "top1_minus_cpu": diff}, indent=1))
PY
  "$py" benchmarks/gpu_stamp.py "$out" "$tag" >>"$out/gpu_check.log" 2>&1
}
compare ce "$out/ce-s0" results/full/cifar100-lt-if100/decoupling-s0

# 5. file-image pipeline with the device decoder
if [ $dry = 1 ]; then bd=(--images 64 --generate 64 --steps 1); else bd=(--images 64 --generate 64); fi
run 45 "$py" -m longtail bench data --device "$dev" --results "$out" "${bd[@]}"

# 6. SSD in the time left (always in the dry run, so the step stays tested): its finished stages against the
# committed seed-0 run, and the rate of a stage the deadline cut off
budget=$(left); [ $dry = 1 ] && budget=240
if [ "$budget" -gt 30 ]; then
  timeout "$budget" "$py" -m longtail train cifar100-lt/ssd --device "$dev" --out "$out/ssd-s0" "${data[@]}" "${scale[@]}" \
    --set runtime.tensorboard=false >>"$out/gpu_check.log" 2>&1; log "rc=$? (budget $budget s): ssd"
  compare ssd "$out/ssd-s0" results/full/cifar100-lt-if100/ssd-s0
else
  log "ssd: no time left ($budget s)"
fi
log "done: $failed step(s) failed"
[ $failed = 0 ]
