"""``longtail bench throughput``: training images/s, in one run, on CIFAR-100-LT with ResNet-32.

* model alone: the engine's CE step (``train_step``) on one synthetic batch, repeated; measured before
  and after the loop (a shared machine drifts) and the better figure kept;
* longtail loop: ``cifar100-lt/ce`` trained for ``--epochs`` epochs by ``run_recipe`` (sampling,
  device-held uint8 data, batched augmentation, the step, logging), its rates taken from the metrics.jsonl
  stamps. The burst rate is the first epoch's steps after warm-up; the sustained rate is every later
  epoch whole, its checkpoint write included, as a long run spends it (start-up and evaluation excluded);
* classic: a per-sample PIL ``Dataset`` batched by a ``DataLoader`` (``bench.classic``), feeding the same step;
* methods: each method's step (``bench.stepcost``), in images/s and peak memory.

The engine's defaults apply throughout: autocast (bf16 where fast, AMP on CUDA) and channels_last.
Writes ``<results>/throughput-<device>.json`` with provenance.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import load_recipe
from ..data.images import DataBundle, ImageSet, TensorStore
from ..engine.context import StageContext
from ..engine.loop import LOG_EVERY
from ..engine.pipeline import git_commit, run_recipe
from ..engine.runtime import Runtime, setup_runtime
from ..errors import LongtailError
from ..methods import Batch, get_method
from .classic import classic_pipeline
from .memory import PeakMemory
from .stepcost import measure_stage, method_costs, stage_context

RECIPE = "cifar100-lt/ce"
BATCH = 128
WARMUP, QUICK_STEPS, QUICK_WARMUP = 5, 2, 1
WORKERS = 2  # DataLoader processes for the classic pipeline


def device_slug(rt: Runtime) -> str:
    if rt.device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(rt.device).lower()).strip("-")


def subset(split: ImageSet, n: int) -> ImageSet:
    """``n`` images of ``split`` at fixed random positions (all of it if it is smaller)."""
    if n >= len(split):
        return split
    images, labels = split.load(np.sort(np.random.default_rng(0).choice(len(split), n, replace=False)))
    return ImageSet(TensorStore(images), labels, split.name)


def bench_data(args) -> DataBundle:
    if args.synthetic:  # hidden: tests without the archive
        from ..data.synthetic import synthetic_bundle

        return synthetic_bundle(num_classes=10, max_per_class=200, imbalance=10, size=16)
    from ..data.build import build_data, resolve_data_root

    recipe = load_recipe(RECIPE)
    return build_data(recipe.data, resolve_data_root(args.data_root, recipe.data.root))


def model_alone(ctx: StageContext, steps: int, warmup: int) -> dict:
    """The engine's CE step on one fixed synthetic batch: no data pipeline at all."""
    rt, d, n = ctx.runtime, ctx.data, ctx.stage.batch_size
    x = torch.randn(n, 3, d.input_size, d.input_size, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, d.num_classes, (n,), device=rt.device)
    batch = {"x": Batch(x, y)}
    return measure_stage(get_method("ce")(ctx), lambda i: batch, steps, warmup)


def epoch_end_times(lines: list[dict], steps_per_epoch: int) -> dict[int, float]:
    """Epoch number (from 1) -> the stamp of its last step's log line, written just before its checkpoint."""
    return {r["step"] // steps_per_epoch: r["time"] for r in lines if "loss" in r and r["step"] % steps_per_epoch == 0}


def sustained_rate(lines: list[dict], steps_per_epoch: int, epoch_images: int) -> tuple[float, int]:
    """(images/s over epochs 2..N end to end, N - 1): the first epoch carries the warm-up, so it is left out."""
    ends = epoch_end_times(lines, steps_per_epoch)
    last = max(ends)
    if last < 2 or 1 not in ends:
        raise LongtailError(f"the sustained rate needs two whole epochs; the run logged the ends of {sorted(ends)}")
    return round((last - 1) * epoch_images / (ends[last] - ends[1]), 1), last - 1


def longtail_loop(data: DataBundle, rt: Runtime, batch: int, quick: bool, epochs: int = 2) -> dict:
    """``epochs`` epochs of ``cifar100-lt/ce`` through ``run_recipe``; rates between logged steps."""
    recipe = load_recipe(RECIPE, ["runtime.progress=false", "runtime.tensorboard=false", "runtime.report_features=0",
                                  f"stages.ce.epochs={epochs}", f"stages.ce.batch_size={batch}"])
    if quick:  # LOG_EVERY warm-up steps, then QUICK_STEPS timed ones; small evaluation splits
        data = dataclasses.replace(data, train=subset(data.train, (LOG_EVERY + QUICK_STEPS) * batch),
                                   val=subset(data.val, batch) if data.val is not None else None, test=subset(data.test, batch))
    with tempfile.TemporaryDirectory(prefix="longtail-bench-") as out:
        run_recipe(recipe, out, runtime=rt, data=dataclasses.replace(data))  # run_recipe may move the splits
        lines = [json.loads(s) for s in (Path(out) / "ce" / "metrics.jsonl").read_text().splitlines() if '"loss"' in s]
    epoch_steps = -(-len(data.train) // batch)
    # Burst: from the first logged step (the ones before it are warm-up) to the last of epoch 1 with only full
    # batches behind it.
    full = [line for line in lines if line["step"] * batch <= len(data.train)]
    if len(full) < 2:
        raise LongtailError(f"the loop benchmark needs two logged steps (every {LOG_EVERY}) with only full batches "
                            f"behind them; the training set has {len(data.train)} images at batch {batch}")
    first, last = full[0], full[-1]
    steps = last["step"] - first["step"]
    sustained, sustained_epochs = sustained_rate(lines, epoch_steps, len(data.train))
    return {"images_per_s": round(steps * batch / (last["time"] - first["time"]), 1), "steps_timed": steps,
            "sustained_images_per_s": sustained, "sustained_epochs": sustained_epochs,
            "epoch_steps": epoch_steps, "train_images": len(data.train)}


def program() -> str:
    name = Path(sys.argv[0]).name
    return "python -m longtail" if name == "__main__.py" else name


def provenance(args, rt: Runtime, batch: int, wall: float) -> dict:
    return {
        "commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
        "device": rt.describe(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "batch": batch,
        "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(wall, 1),
        "command": shlex.join([program(), *sys.argv[1:]]),
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }


def throughput(args) -> dict:
    if args.epochs < 2:
        raise LongtailError(f"--epochs {args.epochs}: the sustained rate needs at least 2 (the first carries the warm-up)")
    t0 = time.perf_counter()
    batch = args.batch or BATCH
    steps, warmup = (QUICK_STEPS, QUICK_WARMUP) if args.quick else (args.steps, WARMUP)
    rt = setup_runtime(load_recipe(RECIPE, [f"runtime.device={args.device or 'auto'}"]).runtime)
    data = bench_data(args)
    ctx = stage_context(RECIPE, "ce", data, rt, batch)
    print(f"device: {rt.describe()}; {len(data.train)} training images; batch {batch}, {steps} timed steps", flush=True)

    model_alone(ctx, 1, 1)  # primes one-time allocations (kernel caches), so no first figure carries them
    alone = [model_alone(ctx, steps, warmup)]
    print(f"model alone            {alone[0]['images_per_s']:8.1f} img/s", flush=True)
    loop = longtail_loop(data, rt, batch, args.quick, args.epochs)
    print(f"longtail loop          {loop['images_per_s']:8.1f} img/s burst, {loop['sustained_images_per_s']:.1f} "
          f"sustained over {loop['sustained_epochs']} whole epoch(s)", flush=True)
    alone.append(model_alone(ctx, steps, warmup))
    print(f"model alone (again)    {alone[1]['images_per_s']:8.1f} img/s", flush=True)
    classic = classic_pipeline(ctx, steps, warmup, WORKERS)
    print(f"classic PIL pipeline   {classic['images_per_s']:8.1f} img/s "
          f"(loader alone {classic['loader_alone_images_per_s']:.1f}, {WORKERS} workers)", flush=True)
    print("per method:", flush=True)
    methods = method_costs(data, rt, steps, warmup, args.batch)

    best = max(alone, key=lambda r: r["images_per_s"])
    res = {
        "model_alone": {**best, "runs": [r["images_per_s"] for r in alone]},
        "longtail_loop": loop,
        "classic_pipeline": classic,
        "ratios": {"loop_over_model_alone": round(loop["images_per_s"] / best["images_per_s"], 4),
                   "sustained_over_model_alone": round(loop["sustained_images_per_s"] / best["images_per_s"], 4),
                   "loop_over_classic": round(loop["images_per_s"] / classic["images_per_s"], 4)},
        "methods": methods,
        "settings": {
            "model": ctx.recipe.model.backbone, "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "fp32",
            "channels_last": rt.channels_last, "steps": steps, "warmup_steps": warmup, "quick": args.quick,
            "data": data.name, "image_size": data.image_size, "num_classes": data.num_classes,
            "images_per_s": "training images drawn per second (all feeds of a step; SSD's rotated copies not counted)",
            "peak_memory": PeakMemory(rt.device).method,
        },
    }
    res["provenance"] = provenance(args, rt, batch, time.perf_counter() - t0)
    path = Path(args.results) / f"throughput-{device_slug(rt)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(f"loop / model alone {res['ratios']['loop_over_model_alone']:.3f}, "
          f"loop / classic {res['ratios']['loop_over_classic']:.3f}; wrote {path}", flush=True)
    return res
