"""SGD and the learning-rate schedule, as a pure function of the global step."""
from __future__ import annotations

import math

import torch

from ..config import OptimConfig, ScheduleConfig


def build_optimizer(params, cfg: OptimConfig, model: torch.nn.Module | None = None) -> torch.optim.SGD:
    """SGD over ``params``; with ``cfg.groups``, one parameter group per part of ``model`` (its top-level
    module: backbone, neck, heads...), whose ``lr_scale`` multiplies the schedule's lr at every step."""
    params = list(params)
    groups = [{"params": params, "lr_scale": 1.0}]
    if cfg.groups and model is not None:
        part = {id(p): name.split(".", 1)[0] for name, p in model.named_parameters()}
        scale = [cfg.groups.get(part.get(id(p)), 1.0) for p in params]
        # Each group starts at its scaled lr, so the optimizer is right before the loop's first lr update too.
        groups = [{"params": [p for p, s in zip(params, scale) if s == sc], "lr_scale": sc, "lr": cfg.lr * sc}
                  for sc in sorted(set(scale))]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """Linear warm-up over ``warmup_epochs``, then multistep / cosine / constant, all per step.

    A pure function of the step, so a resumed run needs no scheduler state
    beyond the step it restarts at.
    """
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        if cfg.warmup_by == "epoch":  # BBN: lr * (f0 + (1 - f0) * e / E) through epoch e < E
            return base_lr * (cfg.warmup_from + (1 - cfg.warmup_from) * (step // steps_per_epoch) / cfg.warmup_epochs)
        return base_lr * (cfg.warmup_from + (1 - cfg.warmup_from) * (step + 1) / warmup)
    if cfg.kind == "multistep":
        passed = sum(step >= round(m * steps_per_epoch) for m in cfg.milestones)
        return base_lr * cfg.gamma ** passed
    if cfg.kind == "cosine":
        t = (step - warmup) / max(1, total_steps - warmup)
        return cfg.final_lr + 0.5 * (base_lr - cfg.final_lr) * (1 + math.cos(math.pi * t))
    return base_lr
