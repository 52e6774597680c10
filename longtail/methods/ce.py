"""Plain cross-entropy: the instance-sampled (CE) and class-balanced (CBS) baselines.

The two baselines differ only in the stage's ``sampler``, set in the recipe.
"""
from __future__ import annotations

from ..losses import class_ce
from .base import Method, Term, register


@register
class CrossEntropy(Method):
    name = "ce"

    def terms(self):
        head = self.head_name
        return {"ce": Term(1.0, lambda classifier, out, b: class_ce(out[head], b), heads=(head,))}
