"""CPU settings over whole epochs: bf16 or fp32, channels_last, the malloc settings, torch.compile.

    python benchmarks/cpu_settings.py [--epochs 3] [--data-root ../shared/data]

Each setting trains ``cifar100-lt/ce`` (ResNet-32, batch 128, the engine's own loop) for ``--epochs``
epochs in a fresh process, one setting at a time. The steady rate comes from the ``metrics.jsonl``
stamps of the epochs after the first; the first epoch's extra time over a steady epoch is the warm-up
cost (torch.compile's cold compile lands there). A 200-epoch stage is projected as start-up + warm-up
+ 200 steady epochs, which is what decides whether compile pays for itself end to end.

Writes ``results/cpu-settings-cpu.json`` with provenance. Run nothing else meanwhile: two trainings on
2 cores slow each other 6-8x.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from longtail.bench.throughput import epoch_end_times  # noqa: E402
from longtail.engine.checkpoint import write_text_atomic  # noqa: E402
from longtail.engine.pipeline import git_commit  # noqa: E402
from train_process import cpu_name  # noqa: E402

MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
SETTINGS = {  # name: (overrides, malloc env)
    "bf16 + channels_last + malloc (defaults)": (["runtime.amp=bf16", "runtime.channels_last=true"], True),
    "bf16 + channels_last, no malloc env": (["runtime.amp=bf16", "runtime.channels_last=true"], False),
    "bf16, no channels_last": (["runtime.amp=bf16", "runtime.channels_last=false"], True),
    "fp32 + channels_last": (["runtime.amp=off", "runtime.channels_last=true"], True),
    "fp32, no channels_last": (["runtime.amp=off", "runtime.channels_last=false"], True),
    "bf16 + channels_last + compile": (["runtime.amp=bf16", "runtime.channels_last=true", "runtime.compile=true"], True),
}


def epoch_times(metrics: Path, steps_per_epoch: int) -> tuple[float, list[float]]:
    """(seconds from the segment start to the end of epoch 1, [seconds of each later epoch])."""
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    start = next(r["time"] for r in recs if r.get("event") == "segment")
    ends = epoch_end_times(recs, steps_per_epoch)
    n = max(ends)
    return ends[1] - start, [ends[e] - ends[e - 1] for e in range(2, n + 1)]


def measure(name: str, overrides: list[str], malloc: bool, epochs: int, data_root: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC}
    if malloc:
        env.update(MALLOC)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "longtail", "train", "cifar100-lt/ce", "--out", f"{tmp}/run",
               "--data-root", data_root, "--set", f"stages.ce.epochs={epochs}", "--set", "runtime.progress=false",
               "--set", "runtime.tensorboard=false", "--set", "runtime.report_features=0",
               *[a for o in overrides for a in ("--set", o)]]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
        steps = results["stages"]["ce"]["steps"] // epochs
        first, later = epoch_times(Path(tmp) / "run" / "ce" / "metrics.jsonl", steps)
    steady = sum(later) / len(later)
    batch = 128
    startup = wall - first - sum(later)  # process start, data, model build, final evaluation
    row = {"overrides": overrides, "malloc_env": malloc, "epochs": epochs, "steps_per_epoch": steps,
           "steady_epoch_s": round(steady, 2), "steady_img_per_s": round(steps * batch / steady, 1),
           "first_epoch_s": round(first, 2), "warmup_extra_s": round(first - steady, 2),
           "process_wall_s": round(wall, 2), "startup_and_eval_s": round(startup, 2),
           "projected_200_epoch_stage_min": round((startup + (first - steady) + 200 * steady) / 60, 1)}
    print(f"{name}: {row['steady_img_per_s']} img/s steady, first epoch +{row['warmup_extra_s']} s, "
          f"200 epochs ~ {row['projected_200_epoch_stage_min']} min", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-root", default=os.environ.get("LONGTAIL_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--only", help="comma-separated setting names (default: all)")
    ap.add_argument("--json", default=str(REPO / "results" / "cpu-settings-cpu.json"))
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SETTINGS)
    t0 = time.time()
    rows = {n: measure(n, *SETTINGS[n], args.epochs, args.data_root) for n in names}
    base = rows.get("bf16 + channels_last + malloc (defaults)")
    if base:
        for r in rows.values():
            r["rate_vs_defaults"] = round(r["steady_img_per_s"] / base["steady_img_per_s"], 3)
    cpu = cpu_name()
    doc = {"what": "cifar100-lt/ce (ResNet-32, batch 128) through the engine, one fresh process per setting",
           "settings": rows,
           "provenance": {"commit": git_commit(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - t0, 1),
                          "command": "python benchmarks/cpu_settings.py " + " ".join(sys.argv[1:])}}
    write_text_atomic(args.json, json.dumps(doc, indent=1) + "\n")
    print(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
