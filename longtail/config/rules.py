"""Rules across fields that the types alone cannot state; :func:`validate` runs on every loaded recipe."""
from __future__ import annotations

import math

from ..errors import ConfigError
from .schema import Recipe


OPTIM_GROUPS = ("backbone", "neck", "heads", "adjust", "aux")  # the Classifier's parts


def validate(recipe: Recipe) -> None:
    names = [s.name for s in recipe.stages]
    if not names:
        raise ConfigError("stages: a recipe needs at least one stage")
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: names must be unique, got {names}")
    for i, s in enumerate(recipe.stages):
        k = f"stages.{s.name}"
        if s.init != "fresh" and s.init not in names[:i]:
            raise ConfigError(f"{k}.init: {s.init!r} is neither 'fresh' nor an earlier stage ({names[:i]})")
        if s.epochs < 0:
            raise ConfigError(f"{k}.epochs must be >= 0")
        if s.batch_size <= 0:
            raise ConfigError(f"{k}.batch_size must be > 0")
        if s.sampler == "class_balanced" and (s.samples_per_class <= 0 or s.batch_size % s.samples_per_class):
            raise ConfigError(f"{k}.batch_size ({s.batch_size}) must be a multiple of samples_per_class ({s.samples_per_class})")
    if not recipe.data.imbalance >= 1:  # also NaN
        raise ConfigError(f"data.imbalance must be >= 1, got {recipe.data.imbalance:g}")
    if recipe.data.few_threshold > recipe.data.many_threshold:
        raise ConfigError("data.few_threshold must not exceed data.many_threshold")
    for s in recipe.stages:
        bad = sorted(set(s.optim.groups) - set(OPTIM_GROUPS))
        if bad:
            raise ConfigError(f"stages.{s.name}.optim.groups: unknown part {bad[0]!r}; choose from {', '.join(OPTIM_GROUPS)}")
        if any(not v >= 0 for v in s.optim.groups.values()):
            raise ConfigError(f"stages.{s.name}.optim.groups: lr multipliers must be >= 0, got {s.optim.groups}")
    for key in ("image_size", "crop_size"):
        if getattr(recipe.data, key) < 0:
            raise ConfigError(f"data.{key} must be >= 0 (0: the dataset's default), got {getattr(recipe.data, key)}")
    if not 0 < recipe.runtime.dist_timeout_min < math.inf:  # also NaN
        raise ConfigError(f"runtime.dist_timeout_min must be a positive number of minutes, got {recipe.runtime.dist_timeout_min:g}")
    if not 1 <= recipe.data.cache_quality <= 100:
        raise ConfigError(f"data.cache_quality must be a JPEG quality in 1..100, got {recipe.data.cache_quality}")
