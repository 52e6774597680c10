"""Edits and queries over a recipe's stages: shorter schedules, the stages a stage needs."""
from __future__ import annotations

import math

from ..errors import ConfigError
from .schema import Recipe, StageConfig


def scale_epochs(recipe: Recipe, factor: float, keep_short: int = 0) -> None:
    """``--epochs-scale``: shrink every stage (and its schedule) for quick runs; at least 1 epoch.

    Stages of at most ``keep_short`` epochs keep their length: the re-balancers (cRT, LWS) are
    short by design and only train a head, so cutting them tests an under-trained head, not the method.
    """
    if factor <= 0:
        raise ConfigError(f"--epochs-scale must be > 0, got {factor}")
    for s in recipe.stages:
        if s.epochs <= keep_short:  # post-hoc stages (0 epochs) do not train
            continue
        new = max(1, round(s.epochs * factor))
        ratio = new / s.epochs if s.epochs else 1.0
        s.epochs = new
        s.schedule.warmup_epochs *= ratio
        s.schedule.milestones = [m * ratio for m in s.schedule.milestones]


def stage_refs(stage: "StageConfig | dict") -> set[str]:
    """The earlier stages a stage starts from (``init``) or learns from (``teacher``/``teachers``, also
    those of a ``compose`` stage's parts)."""
    get = stage.get if isinstance(stage, dict) else lambda k, d=None: getattr(stage, k, d)
    params = get("params") or {}
    parts = params.get("parts") if isinstance(params.get("parts"), list) else []
    refs = {get("init", "fresh")}
    for p in [params] + [p.get("params") or {} for p in parts if isinstance(p, dict)]:
        refs |= {p.get("teacher")} | set(p.get("teachers") or [])
    return {r for r in refs if isinstance(r, str) and r != "fresh"}


def keep_stages(recipe: Recipe, wanted: list[str]) -> None:
    """Drop every stage that neither is in ``wanted`` nor is needed by one that is (a bench grid trains only what it reports)."""
    names = {s.name for s in recipe.stages}
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ConfigError(f"recipe {recipe.name}: no stage named {missing}; stages are {sorted(names)}")
    needed, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(r for r in stage_refs(recipe.stage(name)) if r in names)
    recipe.stages = [s for s in recipe.stages if s.name in needed]


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch))
