"""The end of a stage: pick the weights to report, score them, write the stage record and ``final.pt``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..data.images import DataBundle
from ..methods.base import Method
from ..models.adjust import class_weight_norms
from ..models.classifier import exported_state
from ..report.record import feature_rows, save_record, stage_record
from .checkpoint import load_checkpoint, save_atomic
from .context import StageContext, init_seed
from .distributed import sync_from_main
from .passes import evaluate_split, predict_split, score_logits
from .metric_log import MetricLogger, read_segments


@dataclass
class TrainedStage:
    """What training hands to ``finish_stage``: its validation history and how long it took."""

    history: list = field(default_factory=list)  # [{"epoch", "val_top1"}] at eval_every
    train_seconds: float = 0.0
    steps: int = 0
    img_per_s: float | None = None  # this segment's training rate
    fitted: dict | None = None  # a post-hoc stage's fit report


def data_card(d: DataBundle) -> dict:
    """What predicting with a stage needs of its data, without the data: classes, counts, normalisation, sizes."""
    return {"name": d.name, "class_names": [str(n) for n in d.class_names] or [str(c) for c in range(d.num_classes)],
            "train_counts": [int(c) for c in d.train_counts], "mean": list(d.mean), "std": list(d.std),
            "image_size": d.image_size, "crop_size": d.input_size}


class _Rows:
    """Some rows of a split, with the ``len`` / ``load`` interface that evaluation reads."""

    def __init__(self, split, index: np.ndarray):
        self.split, self.index = split, index

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index):
        return self.split.load(self.index[np.asarray(index)])


def record_arrays(method: Method, model: nn.Module, ctx: StageContext, test_logits) -> dict:
    """What ``report.npz`` keeps: the model's parts of it (class norms, a few classes' test features) taken
    here, the rest of the record a pure function of arrays (report/record.py)."""
    test = ctx.data.test
    norms = class_weight_norms(model, method.head_name)
    rows = feature_rows(test.labels, ctx.train_counts, ctx.recipe.runtime.report_features if hasattr(model, "features") else 0)
    feats = predict_split(ctx, model, _Rows(test, rows), lambda m, x: m.features(x)) if len(rows) else None
    return stage_record(test_logits, test.labels, ctx.train_counts, ctx.data.class_names,
                        None if norms is None else norms.numpy(), feats, test.labels[rows])


def val_fields(val: dict) -> dict:
    return {f"val_{k}": val[k] for k in ("top1", "many", "medium", "few")}


def finish_stage(method: Method, model: nn.Module, ctx: StageContext, stage_dir: Path, logger: MetricLogger,
                 done: TrainedStage) -> dict:
    """Every rank runs it on rank 0's weights, scoring its share of each pass; rank 0 alone writes."""
    stage, rt, history = ctx.stage, ctx.runtime, done.history
    sync_from_main(model, rt)
    val = evaluate_split(method, model, ctx, ctx.data.val) if ctx.data.val is not None and len(ctx.data.val) else None
    if val is not None and stage.epochs:  # the last epoch's point of the validation curve (earlier ones: eval_every)
        logger.log(done.steps, {"epoch": stage.epochs, **val_fields(val)})
    chosen = {"epoch": stage.epochs, "rule": "last"}
    if stage.select == "best_val" and val is not None:
        history.append({"epoch": stage.epochs, "val_top1": val["top1"]})
        # Ties go to the latest epoch: the one best.pt holds (it is rewritten on >=), or the last epoch's own weights.
        best = max(history, key=lambda h: (h["val_top1"], h["epoch"]))
        if best["epoch"] != stage.epochs:
            model.load_state_dict(load_checkpoint(stage_dir / "best.pt")["model"])  # rank 0 wrote it before a barrier
            val = evaluate_split(method, model, ctx, ctx.data.val)
        chosen = {"epoch": best["epoch"], "rule": "best_val"}
    test_logits = predict_split(ctx, model, ctx.data.test, method.predict)
    test = score_logits(ctx, test_logits, ctx.data.test)
    # Before final.pt, so every finished stage has its record: the report then never re-runs the model.
    record = record_arrays(method, model, ctx, test_logits)
    if rt.is_main:
        save_record(stage_dir, record)
    extra = method.report(model)
    metrics = {**test, "val": {k: v for k, v in val.items() if k != "per_class"} if val else None,
               "selected": chosen,
               "init_seed": init_seed(ctx.recipe.runtime.seed, stage) if stage.init == "fresh" else None,
               "train_seconds": round(done.train_seconds, 2), "epochs": stage.epochs, "steps": done.steps,
               **({"fit": done.fitted} if done.fitted else {}), **({"report": extra} if extra else {})}
    logger.log(done.steps, {"epoch": stage.epochs, **{f"test_{k}": test[k] for k in ("top1", "many", "medium", "few")}})
    segments = read_segments(stage_dir / "metrics.jsonl") if rt.is_main else []  # rank 0 writes the log
    metrics["segments"] = segments  # every start and resume: its commit, times and steps
    metrics["wall_seconds_total"] = round(sum(s["wall_seconds"] for s in segments), 2)
    metrics["train_img_per_s_last_segment"] = round(done.img_per_s, 1) if done.img_per_s else None
    if rt.is_main:
        save_atomic({"kind": "final", "stage": stage.name, "method": stage.method, "model": exported_state(model),
                     "recipe": ctx.recipe.to_dict(), "metrics": metrics, "data": data_card(ctx.data)}, stage_dir / "final.pt")
    return metrics
