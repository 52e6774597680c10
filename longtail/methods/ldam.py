"""LDAM-DRW (Cao et al., NeurIPS 2019): a label-distribution-aware margin on a cosine head, and class
re-weighting deferred to the last part of the schedule.

As the official code (kaidic/LDAM-DRW): the margin comes off the true class's cosine before the scale s
(here the cosine head's ``model.cosine_scale``, 30 there), and DRW's weights switch on at ``drw_epoch``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..losses import class_ce, drw_weights, ldam_margins
from .base import Term, register
from .ce import CrossEntropy


@dataclass
class LDAMParams:
    max_m: float = 0.5  # the largest class margin, on the cosine
    drw_epoch: int | None = 160  # from this (0-based) epoch on, class-balanced weights; None: LDAM alone
    beta: float = 0.9999  # DRW's effective-number beta


@register
class LDAMDRW(CrossEntropy):
    """L = CE_w(s * (cos - m_y * 1_y), y), m_c proportional to n_c^(-1/4) (LDAM), w = DRW weights from drw_epoch (STRONG.md §1)."""

    name = "ldam_drw"
    Params = LDAMParams

    def __init__(self, ctx):
        super().__init__(ctx)
        if ctx.recipe.model.head != "cosine":
            raise ConfigError(f"stages.{self.stage.name}: ldam_drw puts its margin on a cosine; set model.head: cosine (cosine_scale: 30 as LDAM)")
        if ctx.recipe.model.cosine_learnable:  # the margin is scaled by the configured s, which a learnt one would leave behind
            raise ConfigError(f"stages.{self.stage.name}: ldam_drw needs a fixed cosine scale; set model.cosine_learnable: false")
        if not 0 <= self.params.beta < 1 or self.params.max_m < 0:
            raise ConfigError(f"stages.{self.stage.name}.params: beta must be in [0, 1) and max_m >= 0")

    def prepare(self, model):
        super().prepare(model)
        device, counts = self.ctx.runtime.device, self.ctx.train_counts
        self.margin = (ldam_margins(counts, self.params.max_m) * self.ctx.recipe.model.cosine_scale).to(device)
        self.weight = drw_weights(counts, self.params.beta).to(device)

    def terms(self):
        head, start = self.head_name, self.params.drw_epoch

        def loss(classifier, out, b):
            w = self.weight if start is not None and b.epoch >= start else None
            return class_ce(out[head], b, weight=w, margin=self.margin)

        return {"ldam": Term(1.0, loss, heads=(head,))}
