"""Plain cross-entropy: the instance-sampled (CE) and class-balanced (CBS) baselines.

The two baselines differ only in the stage's ``sampler``, set in the recipe.
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import Method, register


@register
class CrossEntropy(Method):
    name = "ce"

    def loss(self, model, batch, g):
        b = batch["x"]
        logits = model(b.x)[self.head_name]
        loss = F.cross_entropy(logits.float(), b.y)
        return loss, {"ce": loss.detach()}
