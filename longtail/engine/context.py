"""What a stage's method may see and use: the recipe, its stage, the data, the runtime, earlier stages'
artifacts, and the passes over a split it may run (``predict_split``), so methods never import the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Recipe, StageConfig
from ..data.augment import Augment
from ..data.images import DataBundle, ImageSet
from ..methods.base import Method, get_method
from ..models.classifier import load_exported
from .checkpoint import load_checkpoint
from . import passes
from .runtime import Runtime, derive_seed


@dataclass
class StageContext:
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
        return Augment(spec, mean=d.mean, std=d.std)

    def predict_split(self, model: nn.Module, split: ImageSet, fn) -> torch.Tensor:
        """``fn(model, x)`` over ``split`` in eval mode with this stage's test-time preprocessing (passes.predict_split)."""
        return passes.predict_split(self, model, split, fn)

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


def init_seed(run_seed: int, stage: StageConfig) -> int:
    """The seed of a stage's fresh weights: its own ``seed``, else one derived from (run seed, stage name).

    Derived per stage because both papers re-initialise their students: a student seeded like its
    teacher (SSD stage III after stage I, CBD after its teacher) would start from the same weights.
    """
    if stage.seed is not None:
        return stage.seed
    return derive_seed(run_seed, "init", stage.name) & 0x7FFFFFFF
