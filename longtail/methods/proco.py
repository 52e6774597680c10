"""ProCo (Du et al., TPAMI 2024): the logit-adjusted loss on the classifier, plus a closed-form contrastive
term on two more views of each image, scored against per-class vMF estimates (models/proco.py).

As the official CIFAR code (LeapLabTHU/ProCo ProCo_cifar/main.py, STRONG.md section 6): the three views go
through the backbone in one call (BatchNorm over all of them), the classifier is scored on the first view
only, and the projection head on all three, of which views 2 and 3 enter the contrastive term. Each of those
two first updates the class estimate with its own (detached, all-rank) features, then is scored against it.
At test time the plain classifier: the projection head is training-only and leaves with ``aux``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import class_ce, log_prior
from ..models.proco import ProCoHead
from .base import Feed, register, unwrap
from .ce import CrossEntropy


@dataclass
class ProCoParams:
    tau: float = 1.0  # logit adjustment of both losses (the official LogitAdjust, tau 1)
    alpha: float = 1.0  # weight of the contrastive term
    temperature: float = 0.1
    dim: int = 128  # projection width p (nu = p/2 - 1 in the vMF normaliser)
    hidden: int = 512
    views: str = "cifar_simclr"  # the augmentation of views 2 and 3 (a preset name)


@register
class ProCo(CrossEntropy):
    """L = CE(z_1 + tau log pi, y) + alpha * 1/2 sum_{v=2,3} CE(P(z_v) + tau log pi, y), P the ProCo logits (ProCo Eq. 14 with LA)."""

    name = "proco"
    Params = ProCoParams

    def __init__(self, ctx):
        super().__init__(ctx)
        if self.params.temperature <= 0 or self.params.alpha < 0 or self.params.dim < 4:
            raise ConfigError(f"stages.{self.stage.name}.params: temperature must be > 0, alpha >= 0 and dim >= 4")
        ctx.augment(self.params.views)  # an unknown preset is a config error now, not at the first step

    def terms(self):
        raise NotImplementedError("proco scores two extra views of each image in its own loss; it has no terms to compose")

    def feeds(self):
        return {"x": Feed(self.stage.sampler, views={"v2": self.params.views, "v3": self.params.views})}

    def build_model(self):
        model = super().build_model()
        model.aux["proco"] = ProCoHead(model.feature_dim, self.ctx.num_classes, self.params.hidden, self.params.dim)
        return model

    def prepare(self, model):
        super().prepare(model)
        self.log_prior = log_prior(self.ctx.train_counts, self.ctx.runtime.device)

    def loss(self, model, batch, g):
        b, head = batch["x"], unwrap(model).aux["proco"]
        n = len(b.y)
        out = model(torch.cat([b.x, b.views["v2"], b.views["v3"]]))
        la = class_ce(out[self.head_name][:n].float() + self.params.tau * self.log_prior, b)
        z = head(out["feat"])
        scl = 0.0
        for v in (1, 2):  # views are never mixed, so their labels are b.y even when b.x is
            zv = z[v * n:(v + 1) * n]
            head.vmf.update(zv, b.y, b.epoch)
            scl = scl + F.cross_entropy(head.vmf.expected_logits(zv, self.params.temperature) + self.params.tau * self.log_prior.double(), b.y) / 2
        scl = scl.float()
        return la + self.params.alpha * scl, {"la_ce": la.detach(), "proco": scl.detach()}
