"""The training engine: one loop that every method drives.

``train_stage`` reads in one sitting: build the model, restore a checkpoint, then for each global step
draw the batch plan's indices, fetch and augment them on the device, ask the method for a loss, and
step SGD. All randomness of a step comes from generators seeded by (seed, stage, epoch, step, rank),
so a run resumed at any checkpoint replays exactly what an uninterrupted run does. The pieces live
beside it: ``context`` (what a method sees), ``feeder`` (batches), ``passes`` (prediction over a split)
and ``finish`` (scoring and ``final.pt``).
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.samplers import build_sampler
from ..errors import CheckpointError, TrainingError
from ..methods.base import Batch, Method, get_method
from ..models.resnet import load_torchvision_state_dict
from .checkpoint import load_checkpoint, save_atomic
from .context import StageContext, init_seed
from .distributed import broadcast_object, sync_from_main
from .feeder import stage_loader
from .finish import TrainedStage, finish_stage, val_fields
from .optim import build_optimizer, lr_at
from .passes import evaluate_split
from ..progress import ProgressBar
from .metric_log import MetricLogger
from .runtime import Runtime, derive_seed, step_generator

LOG_EVERY = 25  # steps between loss read-backs: each one is a device sync


def build_stage_model(method: Method, ctx: StageContext, seed: int) -> nn.Module:
    """The stage's model on its device: fresh (seeded), from an earlier stage or pretrained; then ``method.prepare``."""
    torch.manual_seed(seed)  # fresh weights depend on the seed only
    model = method.build_model()
    if ctx.stage.init != "fresh":
        method.init_from(model, load_checkpoint(ctx.artifacts[ctx.stage.init])["model"])
    elif ctx.recipe.model.pretrained:  # an ImageNet-pretrained start, torchvision format
        load_torchvision_state_dict(model.backbone, ctx.recipe.model.pretrained)
    model.to(ctx.runtime.device)
    method.prepare(model)
    if ctx.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def log_segment(logger: MetricLogger, ctx: StageContext, gstep: int) -> None:
    """Mark a start or resume in metrics.jsonl, so each segment's code, host and time stay on record."""
    logger.log(gstep, {"event": "segment", "commit": ctx.commit, "code": ctx.code, "host": platform.node()})


def train_step(method: Method, model: nn.Module, batch: dict[str, Batch], g: torch.Generator,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rt: Runtime) -> tuple[torch.Tensor, dict]:
    """One SGD step: the method's loss under autocast, (scaled) backward, optimiser step."""
    with rt.autocast():
        loss, parts = method.loss(model, batch, g)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, parts


def fit_post_hoc(method: Method, model: nn.Module, ctx: StageContext, stage_dir: Path) -> dict:
    """A stage with no SGD (tau-norm, NCM, logit adjustment): every rank fits on the same gathered features;
    rank 0's fit is kept, and finish_stage gives every rank rank 0's fitted weights."""
    rt = ctx.runtime
    logger = MetricLogger(stage_dir / "metrics.jsonl" if rt.is_main else None, False)
    log_segment(logger, ctx, 0)
    sync_from_main(model, rt)
    fitted = broadcast_object(method.fit(model), rt)
    metrics = finish_stage(method, model, ctx, stage_dir, logger, TrainedStage(fitted=fitted))
    rt.barrier()
    return metrics


def restore(ckpt_path: Path, stage_name: str, model, optimizer, scaler) -> tuple[int, list]:
    """The global step and validation history a checkpoint holds, its state loaded into the training objects."""
    try:
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"]["torch"])
        return ck["scheduler"]["global_step"], ck.get("history", [])
    except (CheckpointError, KeyError, RuntimeError, ValueError, TypeError) as e:  # truncated, or another model's
        why = str(e) if isinstance(e, CheckpointError) else f"checkpoint {ckpt_path} does not fit stage {stage_name}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}"
        raise CheckpointError(f"--resume: {why}; delete it to restart stage {stage_name} from its start") from None


def train_stage(ctx: StageContext, stage_dir: Path, resume: bool = False) -> dict:
    """Train one stage to completion; return its metrics (and write ``final.pt``)."""
    rt, stage = ctx.runtime, ctx.stage
    seed = ctx.recipe.runtime.seed if stage.seed is None else stage.seed  # sampling and augmentation streams
    method = get_method(stage.method)(ctx)
    model = build_stage_model(method, ctx, init_seed(ctx.recipe.runtime.seed, stage))
    if method.trains == "none":  # post-hoc: tau-norm, NCM, logit adjustment
        return fit_post_hoc(method, model, ctx, stage_dir)
    optimizer = build_optimizer(method.parameters(model), stage.optim, model)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

    streams, train = method.feeds(), ctx.data.train
    samplers = {
        name: build_sampler(f.sampler, train.labels, f.batch_size or stage.batch_size, seed=derive_seed(seed, stage.name, name) & 0x7FFFFFFF,
                            samples_per_class=stage.samples_per_class, epoch_length=stage.epoch_length, drop_last=rt.compile)
        for name, f in streams.items()
    }
    steps_per_epoch = next(iter(samplers.values())).steps_per_epoch
    total_steps = stage.epochs * steps_per_epoch
    loader = stage_loader(ctx, method, seed)

    ckpt_path = stage_dir / "checkpoint.pt"
    gstep, history = 0, []
    if resume and ckpt_path.exists():
        gstep, history = restore(ckpt_path, stage.name, model, optimizer, scaler)

    train_model = model
    if rt.distributed:
        # No buffer broadcast each forward (every BN statistic, and ImageNet-LT's 32 MiB MoCo queue): training
        # reads neither across ranks, the queue is the same on every rank (enqueue gathers), and evaluation
        # and final.pt take rank 0's statistics (sync_from_main).
        train_model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                              broadcast_buffers=False)
    if rt.compile:
        train_model = torch.compile(train_model)

    def save(at: int) -> None:
        if rt.is_main:
            epoch_, step_ = divmod(at, steps_per_epoch)
            save_atomic({
                "kind": "checkpoint", "stage": stage.name, "method": stage.method, "epoch": epoch_, "step": step_,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": {"global_step": at, "total_steps": total_steps},
                "sampler": {"seeds": {k: s.seed for k, s in samplers.items()}, "epoch": epoch_, "step": step_},
                "rng": {"torch": torch.get_rng_state()}, "history": history, "recipe": ctx.recipe.to_dict(),
            }, ckpt_path)
        rt.barrier()

    logger = MetricLogger(stage_dir / "metrics.jsonl" if rt.is_main else None, ctx.recipe.runtime.tensorboard)
    bar = ProgressBar(total_steps, f"[{stage.name}]", start=gstep, enabled=ctx.recipe.runtime.progress and rt.is_main)
    every, start_step = ctx.recipe.runtime.checkpoint_every, gstep
    log_segment(logger, ctx, start_step)
    t_start, plans = time.perf_counter(), None
    while gstep < total_steps:
        epoch, step = divmod(gstep, steps_per_epoch)
        if plans is None or step == 0:  # each epoch's plan, and the resumed epoch's: this rank's share of each batch
            plans = {name: s.plan(epoch) for name, s in samplers.items()}
            loader.start_epoch(epoch, {name: [samplers[name].batch(epoch, k % len(p), rt.rank, rt.world, p)
                                              for k in range(steps_per_epoch)] for name, p in plans.items()})
            method.train_mode(model)
            running, seen = None, 0
        g = step_generator(rt.device, seed, stage.name, epoch, step, rt.rank)
        batch = {name: loader.fetch(name, step, g) for name in samplers}
        for name in samplers if step + 1 < steps_per_epoch else ():
            loader.prefetch(name, step + 1)
        lr = lr_at(gstep, total_steps, steps_per_epoch, stage.optim.lr, stage.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss, parts = train_step(method, train_model, batch, g, optimizer, scaler, rt)
        gstep += 1

        parts = {"loss": loss.detach(), **parts}
        running = {k: v.float() for k, v in parts.items()} if running is None else {k: running[k] + v.float() for k, v in parts.items()}
        seen += 1
        end_of_epoch = step + 1 == steps_per_epoch
        if (step + 1) % LOG_EVERY == 0 or end_of_epoch or (every and (step + 1) % every == 0):  # checked before every save
            means = {k: (v / seen).item() for k, v in running.items()}
            if not all(np.isfinite(list(means.values()))):
                raise TrainingError(f"stage {stage.name}: the loss diverged ({means}) at epoch {epoch} step {step}; "
                                    f"lower stages.{stage.name}.optim.lr or set runtime.amp=off. Checkpoints up to here are kept.")
            logger.log(gstep, {"epoch": epoch, "lr": lr, **means})
            bar.update(0, loss=means["loss"], lr=lr)
            running, seen = None, 0
        bar.update(1)
        if every and (step + 1) % every == 0 and not end_of_epoch:
            save(gstep)
        if end_of_epoch:
            if ctx.recipe.runtime.eval_every and (epoch + 1) % ctx.recipe.runtime.eval_every == 0 and ctx.data.val is not None and epoch + 1 < stage.epochs:
                sync_from_main(model, rt)  # every rank scores a share of val, with rank 0's BN statistics
                val = evaluate_split(method, model, ctx, ctx.data.val)
                history.append({"epoch": epoch + 1, "val_top1": val["top1"]})
                logger.log(gstep, {"epoch": epoch + 1, **val_fields(val)})
                if stage.select == "best_val" and val["top1"] >= max(h["val_top1"] for h in history) and rt.is_main:
                    save_atomic({"kind": "best", "epoch": epoch + 1, "model": model.state_dict()}, stage_dir / "best.pt")
            save(gstep)
    bar.close()
    train_time = time.perf_counter() - t_start

    # This segment's own rate, training steps only: what a full run sustains, beside bench's bursts. Every
    # stream's batch counts (BalanceAux draws two a step); augmented copies such as rotations do not.
    per_step = sum(s.batch_size for s in samplers.values())
    rate = (total_steps - start_step) * per_step / train_time if train_time > 0 and total_steps > start_step else None
    metrics = finish_stage(method, model, ctx, stage_dir, logger,
                           TrainedStage(history, train_time, total_steps, img_per_s=rate))
    logger.close()
    rt.barrier()
    return metrics
