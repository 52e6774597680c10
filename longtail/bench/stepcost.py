"""What one training step of a stage costs, measured through the engine's own pieces.

``measure_stage`` builds the stage's model as ``train_stage`` does (``build_stage_model``: the method's
model, its teachers loaded by ``method.prepare``, channels_last) and times the engine's ``train_step``
(the method's loss under autocast, backward, SGD) on batches the caller supplies. The peak memory
covers all of it: model, teachers, optimiser state and activations.

``method_costs`` does that for the methods of the README, from their CIFAR-100-LT recipes. Their
batches come from the engine's ``BatchLoader`` (device transfer and batched augmentation, drawn once
before the clock starts); teachers have random weights, since the cost, not the accuracy, is measured.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import load_recipe, stage_refs
from ..data.images import DataBundle
from ..engine.checkpoint import save_atomic
from ..engine.context import StageContext
from ..engine.feeder import stage_loader
from ..engine.loop import build_stage_model, train_step
from ..engine.optim import build_optimizer
from ..engine.runtime import Runtime
from ..methods import Batch, Method, get_method
from ..models.classifier import exported_state
from .memory import PeakMemory

Batches = Callable[[int], dict[str, Batch]]  # step number -> the step's batches by feed name

METHOD_STAGES = {  # result key -> (recipe, stage)
    "ce": ("cifar100-lt/ce", "ce"),
    "ssd_stage1_rotation": ("cifar100-lt/ssd", "stage1"),
    "ssd_stage3_online_teacher": ("cifar100-lt/ssd", "stage3"),
    "cbd_k1": ("cifar100-lt/cbd", "cbd"),
    "cbd_k4": ("cifar100-lt/cbd_ens4", "cbd_ens4"),
    "balance_aux": ("cifar100-lt/balance_aux", "main"),
    "ldam_drw": ("cifar100-lt/ldam_drw", "ce"),
    "strong_mixup": ("cifar100-lt/strong_mixup", "ce"),
    "strong": ("cifar100-lt/strong", "ce"),
    "strong_experts3": ("cifar100-lt/strong_experts", "ce"),
    "strong_distill_student": ("cifar100-lt/strong_distill", "student"),
    "proco": ("cifar100-lt/proco", "ce"),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_stage(method: Method, batches: Batches, steps: int, warmup: int) -> dict:
    """Images/s (images drawn per step, all feeds), ms per step and peak memory of ``method``'s training step."""
    ctx = method.ctx
    rt = ctx.runtime
    drawn: list[int] = []

    with PeakMemory(rt.device) as mem:
        model = build_stage_model(method, ctx, seed=0)
        method.train_mode(model)
        optimizer = build_optimizer(method.parameters(model), ctx.stage.optim)
        scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
        g = torch.Generator(device=rt.device).manual_seed(0)

        def step(i: int) -> None:
            batch = batches(i)
            drawn.append(sum(len(b.y) for b in batch.values()))
            train_step(method, model, batch, g, optimizer, scaler, rt)

        for i in range(warmup):
            step(i)
        synchronize(rt.device)
        t0 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            step(i)
        synchronize(rt.device)
        secs = time.perf_counter() - t0
    images = sum(drawn[warmup:])
    return {"images_per_s": round(images / secs, 1), "ms_per_step": round(1000 * secs / steps, 2),
            "images_per_step": images // steps, "peak_mem_mib": round(mem.mib, 1)}


def stage_context(recipe_name: str, stage: str, data: DataBundle, rt: Runtime, batch: int | None = None) -> StageContext:
    """A stage of a packaged recipe, on ``data``; ``batch`` overrides its batch size."""
    recipe = load_recipe(recipe_name, [f"stages.{stage}.batch_size={batch}"] if batch else [])
    return StageContext(recipe, recipe.stage(stage), data, rt)


def random_artifacts(ctx: StageContext, where: Path) -> dict[str, Path]:
    """A ``final.pt`` with random weights for every stage that ``ctx.stage`` starts from or learns from."""
    artifacts = {}
    for i, ref in enumerate(sorted(stage_refs(ctx.stage))):
        torch.manual_seed(1000 + i)
        model = ctx.teacher_method(ref).build_model()
        artifacts[ref] = where / ref / "final.pt"
        save_atomic({"kind": "final", "stage": ref, "model": exported_state(model)}, artifacts[ref])
    return artifacts


def feed_batches(method: Method, pool: int) -> Batches:
    """``pool`` augmented batches per feed at random indices, made by the engine's BatchLoader, then cycled."""
    ctx = method.ctx
    feeder = stage_loader(ctx, method, 0)
    rng = np.random.default_rng(0)
    g = torch.Generator(device=ctx.runtime.device).manual_seed(0)
    n, feeds = len(ctx.data.train), method.feeds()
    size = {name: f.batch_size or ctx.stage.batch_size for name, f in feeds.items()}
    feeder.start_epoch(0, {name: [rng.choice(n, size[name], replace=size[name] > n) for _ in range(pool)] for name in feeds})
    steps = [{name: feeder.fetch(name, i, g) for name in feeds} for i in range(pool)]
    return lambda i: steps[i % pool]


def method_costs(data: DataBundle, rt: Runtime, steps: int, warmup: int, batch: int | None = None, pool: int = 4) -> dict:
    """``measure_stage`` for every entry of ``METHOD_STAGES``, plus each one's step time relative to CE."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="longtail-bench-") as tmp:
        for key, (recipe_name, stage) in METHOD_STAGES.items():
            ctx = stage_context(recipe_name, stage, data, rt, batch)
            ctx.artifacts = random_artifacts(ctx, Path(tmp) / key)
            method = get_method(ctx.stage.method)(ctx)
            out[key] = measure_stage(method, feed_batches(method, min(pool, steps + warmup)), steps, warmup)
            r = out[key]
            first = next(iter(method.feeds().values()))  # the feed whose sampler sets the epoch's length
            r["epoch_images_per_step"] = first.batch_size or ctx.stage.batch_size
            print(f"  {key:27s} {r['images_per_s']:8.1f} img/s  {r['ms_per_step']:8.1f} ms/step  "
                  f"{r['peak_mem_mib']:7.1f} MiB peak", flush=True)
    for r in out.values():
        r["step_time_vs_ce"] = round(r["ms_per_step"] / out["ce"]["ms_per_step"], 3)
        # an epoch is the first feed's pass over the training set (BalanceAux's second feed rides along): its
        # cost against a CE epoch, issue 28's budget unit, is the time per image of that feed against CE's
        per_image = lambda m: m["ms_per_step"] / m["epoch_images_per_step"]  # noqa: E731
        r["epoch_cost_vs_ce"] = round(per_image(r) / per_image(out["ce"]), 3)
    return out
