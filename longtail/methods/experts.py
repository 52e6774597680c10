"""Balanced product of experts (BalPoE, Sanchez Aimar et al., CVPR 2023): expert e is trained with the
logit-adjusted loss at its own tau_e; the test logits are the mean of the experts' raw logits, which is
balanced when the taus average to 1. The experts are a model option (``model.experts``, see models/experts.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..losses import class_ce, log_prior
from ..models.experts import ExpertsHead
from .base import Term, register
from .ce import CrossEntropy


@dataclass
class ExpertsParams:
    taus: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])  # one per expert (BalPoE CIFAR: 0, 1, 2)


@register
class ExpertsLogitAdjusted(CrossEntropy):
    """L = (1/E) sum_e CE(z_e + tau_e * log pi, y) (BalPoE's model/loss.py: a logit-adjusted loss per expert, STRONG.md §5)."""

    name = "experts_la"
    Params = ExpertsParams

    def __init__(self, ctx):
        super().__init__(ctx)
        e = ctx.recipe.model.experts
        if e < 2 or len(self.params.taus) != e:
            raise ConfigError(f"stages.{self.stage.name}.params.taus: give one tau per expert (model.experts: {e}, taus: {self.params.taus})")

    def prepare(self, model):
        super().prepare(model)
        self.log_prior = log_prior(self.ctx.train_counts, self.ctx.runtime.device)

    def terms(self):
        head = self.head_name

        def loss(classifier, out, b):
            experts: ExpertsHead = classifier.heads[head]
            zs = experts.each(out["feat"])
            return sum(class_ce(z.float() + t * self.log_prior, b) for z, t in zip(zs, self.params.taus)) / len(zs)

        return {"experts_la": Term(1.0, loss, heads=(head,))}
