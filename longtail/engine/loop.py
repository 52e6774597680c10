"""The training engine: one loop that every method drives.

``train_stage`` reads in one sitting: build the model, restore a checkpoint,
then for each step draw the batch plan's indices, fetch and augment them on
the device, ask the method for a loss, and step SGD. All randomness of a step
comes from a generator seeded by (seed, stage, epoch, step, rank), so a run
resumed at any checkpoint replays exactly what an uninterrupted run does.
"""
from __future__ import annotations

import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Recipe, StageConfig
from ..data.augment import Augment, ImageList
from ..data.augment.mix import Mixer
from ..data.images import DataBundle, ImageSet, TensorStore
from ..data.samplers import build_sampler
from ..errors import CheckpointError, TrainingError
from ..methods.base import Batch, Method, get_method
from ..models.classifier import exported_state, load_exported
from ..models.resnet import load_torchvision_state_dict
from ..report.record import save_record, stage_record
from .checkpoint import load_checkpoint, save_atomic
from .distributed import broadcast_object, gather_batches, sync_from_main
from .evaluate import accuracy_metrics, eval_batches, predict_batches
from .optim import build_optimizer, lr_at
from .progress import MetricLogger, ProgressBar, read_segments
from .runtime import Runtime, derive_seed, step_generator

LOG_EVERY = 25  # steps between loss read-backs: each one is a device sync


@dataclass
class StageContext:
    """What a method may see: the recipe, its stage, the data, and earlier stages' artifacts."""

    recipe: Recipe
    stage: StageConfig
    data: DataBundle
    runtime: Runtime
    artifacts: dict[str, Path] = field(default_factory=dict)  # stage name -> final checkpoint
    out_dir: Path | None = None  # this stage's folder, for figures
    commit: str | None = None  # the code this segment runs, for the stage's segment log
    code: str | None = None  # its content hash (runtime.code_hash), which outlives an amended commit

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def train_counts(self) -> np.ndarray:
        return self.data.train_counts

    def augment(self, spec) -> Augment:
        d = self.data
        if isinstance(spec, str):
            return Augment.preset(spec, mean=d.mean, std=d.std, size=d.input_size)
        return Augment.from_spec(spec, mean=d.mean, std=d.std)

    def for_stage(self, name: str) -> "StageContext":
        return StageContext(self.recipe, self.recipe.stage(name), self.data, self.runtime, self.artifacts)  # no out_dir: read-only

    def teacher_method(self, ref: str) -> Method:
        """The method of an earlier stage, or of the stage a ``final.pt`` from another run was saved by."""
        if ref in [s.name for s in self.recipe.stages]:
            ctx = self.for_stage(ref)
        else:
            from ..config import recipe_from_dict

            ck = load_checkpoint(ref)
            recipe = recipe_from_dict(ck["recipe"])
            ctx = StageContext(recipe, recipe.stage(ck["stage"]), self.data, self.runtime)
        return get_method(ctx.stage.method)(ctx)

    def teacher_state(self, ref: str) -> dict:
        return load_checkpoint(self.artifacts[ref] if ref in self.artifacts else ref)["model"]

    def load_teacher(self, ref: str) -> tuple[Method, nn.Module]:
        """A trained model (earlier stage name or ``final.pt`` path), frozen in eval mode, and its method."""
        method = self.teacher_method(ref)
        model = method.build_model()
        load_exported(model, self.teacher_state(ref))
        model.to(self.runtime.device).eval().requires_grad_(False)
        if self.runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        return method, model


class Feeder:
    """Turns index arrays into augmented device batches.

    Tensor-held data is indexed in place. File-backed data is decoded and cut to the input size
    (the augmentation's per-image first op) one step ahead on a background thread, so this overlaps
    the previous step's compute. That cut draws from a CPU generator of its own, seeded by (seed,
    stage, rank, epoch, step, feed), so a resumed run cuts the same crops; the remaining ops run
    batched on the device with the step's generator.
    """

    def __init__(self, split: ImageSet, augment: Augment, rt: Runtime, *seed_parts, mixer: Mixer | None = None):
        self.split, self.augment, self.rt, self.seed_parts, self.mixer = split, augment, rt, seed_parts, mixer
        decode_on(split, rt)
        self.pool = None if isinstance(split.store, TensorStore) else ThreadPoolExecutor(1, thread_name_prefix="feed")
        self.ahead: dict[tuple, tuple[np.ndarray, Future]] = {}

    def _prepare(self, index: np.ndarray, key: tuple):
        """``(input, raw, labels, sized)``: for file data the cut uint8 batch, else the raw one."""
        raw, labels = self.split.load(index)
        if not isinstance(raw, ImageList):
            return raw, raw, labels, False
        x, _ = cut_files(self.augment, raw, step_generator(torch.device("cpu"), *self.seed_parts, *key, "size"))
        if self.rt.device.type == "cuda" and not x.is_cuda:
            x = x.pin_memory()
        return x, raw.to(self.rt.device), labels, True

    def prefetch(self, index: np.ndarray, key: tuple) -> None:
        if self.pool is not None:
            self.ahead[key] = (index, self.pool.submit(self._prepare, index, key))

    def fetch(self, index: np.ndarray, g: torch.Generator, key: tuple) -> Batch:
        """The batch of ``index``; ``key`` = (epoch, step, feed) names it for the cut's generator."""
        ahead = self.ahead.pop(key, None)
        if ahead is not None and np.array_equal(ahead[0], index):
            x, raw, labels, sized = ahead[1].result()
        else:
            x, raw, labels, sized = self._prepare(index, key)
        x = x.to(self.rt.device, non_blocking=True)
        if not sized:
            raw = x
        x = self.augment(x, g, sized=sized)
        if self.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels).to(self.rt.device, non_blocking=True)
        mix = None
        if self.mixer is not None and self.mixer.active(key[0]):  # after the ops: teachers score the mixed batch too
            x, mix = self.mixer(x, y, derive_seed(*self.seed_parts, *key, "mix") & 0x7FFFFFFF)
        return Batch(x, y, torch.from_numpy(index).to(self.rt.device), raw, epoch=key[0], mix=mix)


def cut_files(aug: Augment, images, g: torch.Generator) -> tuple[torch.Tensor, bool]:
    """``(batch, sized)``: file images cut to the input size by the augmentation's first op; tensors as they are."""
    if isinstance(images, ImageList):
        return aug.size_images(images, g), True
    return images, False


def decode_on(split: ImageSet, rt: Runtime) -> None:
    """Let a file store decode on the training device where it can (nvJPEG on a GPU, from the cache)."""
    use = getattr(getattr(split, "store", None), "use_device", None)
    if use is not None:
        use(rt.device)


@torch.no_grad()
def run_over(ctx: StageContext, model: nn.Module, split: ImageSet, fn) -> torch.Tensor:
    """``fn(model, x)`` over a whole split in order, in eval mode, with the stage's test-time preprocessing.
    Under DDP every rank must call it: each scores a share of the batches, and all get the whole result."""
    rt = ctx.runtime
    aug = ctx.augment(ctx.stage.eval_augment)
    g, g_cpu = torch.Generator(device=rt.device), torch.Generator()
    decode_on(split, rt)

    def load(index):  # on the look-ahead thread: file images are cut to the input size there
        return cut_files(aug, split.load(index)[0], g_cpu)

    def prepare(loaded):
        x, sized = loaded
        x = aug(x.to(rt.device, non_blocking=True), g, sized=sized)
        return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x

    batches = eval_batches(len(split), ctx.recipe.runtime.eval_batch_size)
    was_training = model.training
    model.eval()
    with rt.autocast():
        mine = predict_batches(lambda x: fn(model, x), batches[rt.rank::rt.world], load, prepare)
    model.train(was_training)
    return gather_batches(mine, [len(b) for b in batches], rt)


def evaluate_split(method: Method, model: nn.Module, ctx: StageContext, split: ImageSet) -> dict:
    return score_logits(ctx, run_over(ctx, model, split, method.predict), split)


def score_logits(ctx: StageContext, logits: torch.Tensor, split: ImageSet) -> dict:
    d = ctx.recipe.data
    return accuracy_metrics(logits, split.labels, ctx.train_counts, d.many_threshold, d.few_threshold)


def init_seed(run_seed: int, stage: StageConfig) -> int:
    """The seed of a stage's fresh weights: its own ``seed``, else one derived from (run seed, stage name).

    Derived per stage because both papers re-initialise their students: a student seeded like its
    teacher (SSD stage III after stage I, CBD after its teacher) would start from the same weights.
    """
    if stage.seed is not None:
        return stage.seed
    return derive_seed(run_seed, "init", stage.name) & 0x7FFFFFFF


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


def train_stage(ctx: StageContext, stage_dir: Path, resume: bool = False) -> dict:
    """Train one stage to completion; return its metrics (and write ``final.pt``)."""
    rt, stage = ctx.runtime, ctx.stage
    seed = ctx.recipe.runtime.seed if stage.seed is None else stage.seed  # sampling and augmentation streams
    method = get_method(stage.method)(ctx)
    model = build_stage_model(method, ctx, init_seed(ctx.recipe.runtime.seed, stage))
    if method.train_scope == "none":  # post-hoc: tau-norm, NCM, logit adjustment
        logger = MetricLogger(stage_dir / "metrics.jsonl" if rt.is_main else None, False)
        log_segment(logger, ctx, 0)
        sync_from_main(model, rt)
        # Every rank fits (its share of each feature pass) on the same gathered features; rank 0's fit is
        # kept, and finish_stage gives every rank rank 0's fitted weights.
        fitted = broadcast_object(method.fit(model), rt)
        metrics = finish_stage(method, model, ctx, stage_dir, [], logger, 0.0, 0, fitted)
        rt.barrier()
        return metrics
    optimizer = build_optimizer(method.parameters(model), stage.optim, model)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

    feeds = method.feeds()
    train = ctx.data.train
    samplers = {
        name: build_sampler(f.sampler, train.labels, f.batch_size or stage.batch_size, seed=derive_seed(seed, stage.name, name) & 0x7FFFFFFF,
                            samples_per_class=stage.samples_per_class, epoch_length=stage.epoch_length)
        for name, f in feeds.items()
    }
    primary = next(iter(samplers.values()))
    steps_per_epoch = primary.steps_per_epoch
    total_steps = stage.epochs * steps_per_epoch
    feeder = Feeder(train, ctx.augment(stage.augment), rt, seed, stage.name, rt.rank, mixer=Mixer(stage.mix))

    ckpt_path = stage_dir / "checkpoint.pt"
    epoch, step, history = 0, 0, []
    if resume and ckpt_path.exists():
        try:
            ck = load_checkpoint(ckpt_path)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            torch.set_rng_state(ck["rng"]["torch"])
            epoch, step, history = ck["epoch"], ck["step"], ck.get("history", [])
        except (CheckpointError, KeyError, RuntimeError, ValueError, TypeError) as e:  # truncated, or another model's
            why = str(e) if isinstance(e, CheckpointError) else f"checkpoint {ckpt_path} does not fit stage {stage.name}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}"
            raise CheckpointError(f"--resume: {why}; delete it to restart stage {stage.name} from its start") from None

    train_model = model
    if rt.distributed:
        train_model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if rt.compile:
        train_model = torch.compile(train_model)

    def save(epoch_: int, step_: int) -> None:
        if rt.is_main:
            save_atomic({
                "kind": "checkpoint", "stage": stage.name, "method": stage.method, "epoch": epoch_, "step": step_,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": {"global_step": epoch_ * steps_per_epoch + step_, "total_steps": total_steps},
                "sampler": {"seeds": {k: s.seed for k, s in samplers.items()}, "epoch": epoch_, "step": step_},
                "rng": {"torch": torch.get_rng_state()}, "history": history, "recipe": ctx.recipe.to_dict(),
            }, ckpt_path)
        rt.barrier()

    logger = MetricLogger(stage_dir / "metrics.jsonl" if rt.is_main else None, ctx.recipe.runtime.tensorboard)
    bar = ProgressBar(total_steps, f"[{stage.name}]", start=epoch * steps_per_epoch + step,
                      enabled=ctx.recipe.runtime.progress and rt.is_main)
    every = ctx.recipe.runtime.checkpoint_every
    start_step = epoch * steps_per_epoch + step
    log_segment(logger, ctx, start_step)
    t_start = time.perf_counter()
    while epoch < stage.epochs:
        plans = {name: s.plan(epoch) for name, s in samplers.items()}
        method.train_mode(model)
        running, seen = None, 0
        for step in range(step, steps_per_epoch):
            gstep = epoch * steps_per_epoch + step
            g = step_generator(rt.device, seed, stage.name, epoch, step, rt.rank)
            shard = lambda name, s: samplers[name].batch(epoch, s % len(plans[name]), rt.rank, rt.world, plans[name])  # noqa: E731
            batch = {name: feeder.fetch(shard(name, step), g, (epoch, step, name)) for name in samplers}
            for name in samplers if step + 1 < steps_per_epoch else ():
                feeder.prefetch(shard(name, step + 1), (epoch, step + 1, name))
            lr = lr_at(gstep, total_steps, steps_per_epoch, stage.optim.lr, stage.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss, parts = train_step(method, train_model, batch, g, optimizer, scaler, rt)

            parts = {"loss": loss.detach(), **parts}
            running = {k: v.float() for k, v in parts.items()} if running is None else {k: running[k] + v.float() for k, v in parts.items()}
            seen += 1
            if (step + 1) % LOG_EVERY == 0 or step + 1 == steps_per_epoch or (every and (step + 1) % every == 0):  # checked before every save
                means = {k: (v / seen).item() for k, v in running.items()}
                if not all(np.isfinite(list(means.values()))):
                    raise TrainingError(f"stage {stage.name}: the loss diverged ({means}) at epoch {epoch} step {step}; "
                                        f"lower stages.{stage.name}.optim.lr or set runtime.amp=off. Checkpoints up to here are kept.")
                logger.log(gstep + 1, {"epoch": epoch, "lr": lr, **means})
                bar.update(0, loss=means["loss"], lr=lr)
                running, seen = None, 0
            bar.update(1)
            if every and (step + 1) % every == 0 and step + 1 < steps_per_epoch:
                save(epoch, step + 1)
        epoch, step = epoch + 1, 0
        if ctx.recipe.runtime.eval_every and epoch % ctx.recipe.runtime.eval_every == 0 and ctx.data.val is not None and epoch < stage.epochs:
            sync_from_main(model, rt)  # every rank scores a share of val, with rank 0's BN statistics
            val = evaluate_split(method, model, ctx, ctx.data.val)
            history.append({"epoch": epoch, "val_top1": val["top1"]})
            logger.log(epoch * steps_per_epoch, {"epoch": epoch, **{f"val_{k}": val[k] for k in ("top1", "many", "medium", "few")}})
            if stage.select == "best_val" and val["top1"] >= max(h["val_top1"] for h in history) and rt.is_main:
                save_atomic({"kind": "best", "epoch": epoch, "model": model.state_dict()}, stage_dir / "best.pt")
        save(epoch, 0)
    bar.close()
    train_time = time.perf_counter() - t_start

    # This segment's own rate, training steps only: what a full run sustains, beside bench's bursts. Every
    # feed's batch counts (BalanceAux draws two a step); augmented copies such as rotations do not.
    per_step = sum(s.batch_size for s in samplers.values())
    rate = (total_steps - start_step) * per_step / train_time if train_time > 0 and total_steps > start_step else None
    metrics = finish_stage(method, model, ctx, stage_dir, history, logger, train_time, total_steps, img_per_s=rate)
    logger.close()
    rt.barrier()
    return metrics


def data_card(d: DataBundle) -> dict:
    """What predicting with a stage needs of its data, without the data: classes, counts, normalisation, sizes."""
    return {"name": d.name, "class_names": [str(n) for n in d.class_names] or [str(c) for c in range(d.num_classes)],
            "train_counts": [int(c) for c in d.train_counts], "mean": list(d.mean), "std": list(d.std),
            "image_size": d.image_size, "crop_size": d.input_size}


def finish_stage(method: Method, model: nn.Module, ctx: StageContext, stage_dir: Path, history: list,
                 logger: MetricLogger, train_time: float, total_steps: int, fitted: dict | None = None,
                 img_per_s: float | None = None) -> dict:
    """Pick the weights to report (last epoch, or best on validation), score them, write ``final.pt``.
    Every rank runs it on rank 0's weights, scoring its share of each pass; rank 0 alone writes."""
    stage, rt = ctx.stage, ctx.runtime
    sync_from_main(model, rt)
    val = evaluate_split(method, model, ctx, ctx.data.val) if ctx.data.val is not None and len(ctx.data.val) else None
    if val is not None and stage.epochs:  # the last epoch's point of the validation curve (earlier ones: eval_every)
        logger.log(total_steps, {"epoch": stage.epochs, **{f"val_{k}": val[k] for k in ("top1", "many", "medium", "few")}})
    chosen = {"epoch": stage.epochs, "rule": "last"}
    if stage.select == "best_val" and val is not None:
        history.append({"epoch": stage.epochs, "val_top1": val["top1"]})
        # Ties go to the latest epoch: the one best.pt holds (it is rewritten on >=), or the last epoch's own weights.
        best = max(history, key=lambda h: (h["val_top1"], h["epoch"]))
        if best["epoch"] != stage.epochs:
            model.load_state_dict(load_checkpoint(stage_dir / "best.pt")["model"])  # rank 0 wrote it before a barrier
            val = evaluate_split(method, model, ctx, ctx.data.val)
        chosen = {"epoch": best["epoch"], "rule": "best_val"}
    test_logits = run_over(ctx, model, ctx.data.test, method.predict)
    test = score_logits(ctx, test_logits, ctx.data.test)
    # Before final.pt, so every finished stage has its record: the report then never re-runs the model.
    record = stage_record(method, model, ctx, test_logits)
    if rt.is_main:
        save_record(stage_dir, record)
    extra = method.report(model)
    metrics = {**test, "val": {k: v for k, v in val.items() if k != "per_class"} if val else None,
               "selected": chosen,
               "init_seed": init_seed(ctx.recipe.runtime.seed, stage) if stage.init == "fresh" else None, "train_seconds": round(train_time, 2), "epochs": stage.epochs, "steps": total_steps,
               **({"fit": fitted} if fitted else {}), **({"report": extra} if extra else {})}
    logger.log(total_steps, {"epoch": stage.epochs, **{f"test_{k}": test[k] for k in ("top1", "many", "medium", "few")}})
    segments = read_segments(stage_dir / "metrics.jsonl") if rt.is_main else []  # rank 0 writes the log
    metrics["segments"] = segments  # every start and resume: its commit, times and steps
    metrics["wall_seconds_total"] = round(sum(s["wall_seconds"] for s in segments), 2)
    metrics["train_img_per_s_last_segment"] = round(img_per_s, 1) if img_per_s else None
    if rt.is_main:
        save_atomic({"kind": "final", "stage": stage.name, "method": stage.method, "model": exported_state(model),
                     "recipe": ctx.recipe.to_dict(), "metrics": metrics, "data": data_card(ctx.data)}, stage_dir / "final.pt")
    return metrics
