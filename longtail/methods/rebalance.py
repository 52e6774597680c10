"""Decoupled classifier re-balancing (Kang et al., ICLR 2020) and logit adjustment (Menon et al., ICLR 2021).

Each runs as a stage on an earlier stage's weights (``init: <stage>``):

* ``crt``: re-initialise the class head, re-train it on the frozen backbone;
* ``lws``: learn one scale per class on the frozen head;
* ``tau_norm``, ``ncm``, ``logit_adjust``: post-hoc, no SGD; tau is picked on the validation split;
* ``la_loss``: logit adjustment as a training loss, from scratch.

Fine-tuning is the ``ce`` method with ``init: <stage>`` and a small lr.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.adjust import LogitAdjust, LWSScale, NearestClassMean, TauNorm
from ..losses import class_ce, log_prior
from .base import Term, register
from .ce import CrossEntropy


@dataclass
class HeadParams:
    head: str = "main"  # which class head to re-balance


@register
class ClassifierRetraining(CrossEntropy):
    """cRT: a fresh class head trained on frozen features (use a class-balanced sampler)."""

    name = "crt"
    default_train = "classifier"
    Params = HeadParams

    def __init__(self, ctx):
        super().__init__(ctx)
        self.check_head()  # here, not as a KeyError inside init_from

    def init_from(self, model, state):
        super().init_from(model, state)
        model.heads[self.head_name].reset_parameters()


class AdjustedHead(CrossEntropy):
    """A stage that puts a logit adjuster on an earlier stage's head (see models/adjust.py)."""

    Params = HeadParams

    def __init__(self, ctx):
        super().__init__(ctx)
        self.check_head()

    def make_adjuster(self, model):
        raise NotImplementedError

    def build_model(self):
        model = super().build_model()
        model.adjust[self.head_name] = self.make_adjuster(model)
        return model


@register
class LearnableWeightScaling(AdjustedHead):
    """LWS: z_c = f_c * (w_c . v + b_c) with only f trained, from f = 1 (use a class-balanced sampler)."""

    name = "lws"
    default_train = "lws"

    def make_adjuster(self, model):
        return LWSScale(self.ctx.num_classes)


@dataclass
class TauParams:
    head: str = "main"
    tau: float | None = None  # a fixed tau; None: choose it on the validation split from the grid
    grid: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(21)])  # [0, 2]


class PostHoc(AdjustedHead):
    """A stage that fits a logit adjuster without SGD; tau comes from the validation split only."""

    default_train = "none"
    Params = TauParams

    def choose_tau(self, model) -> dict:
        """Score every tau of the grid on the validation split; keep the best (the smallest on ties)."""
        adjuster = model.adjust[self.head_name]
        if self.params.tau is not None:
            adjuster.tau.fill_(self.params.tau)
            return {"tau": self.params.tau, "rule": "fixed"}
        val = self.ctx.data.val
        if val is None or len(val) == 0:
            raise ConfigError(f"stages.{self.stage.name}: choosing tau needs a validation split; "
                              f"set stages.{self.stage.name}.params.tau instead")
        head = model.heads[self.head_name]
        # One pass for features and raw logits; each tau is then a cheap re-scoring.
        feats = self.ctx.predict_split(model, val, lambda m, x: m.features(x))
        labels = torch.as_tensor(val.labels)
        raw = head(feats.to(next(head.parameters()).device)).float().cpu()
        per_class = np.bincount(val.labels, minlength=self.ctx.num_classes).clip(min=1)
        scores = {}
        for tau in self.params.grid:
            adjuster.tau.fill_(tau)
            with torch.no_grad():
                z = adjuster(raw.to(adjuster.tau.device), feats.to(adjuster.tau.device), head).cpu()
            hit = (z.argmax(1) == labels).double()
            # Mean per-class accuracy, so the val split's classes weigh equally even if one is short.
            acc = np.bincount(val.labels, weights=hit.numpy(), minlength=self.ctx.num_classes) / per_class
            present = np.bincount(val.labels, minlength=self.ctx.num_classes) > 0
            scores[tau] = round(100 * float(acc[present].mean()), 4)
        best = max(self.params.grid, key=lambda t: (scores[t], -t))
        adjuster.tau.fill_(best)
        return {"tau": best, "rule": "best val top-1 over grid", "val_top1_by_tau": scores}


@register
class TauNormalisation(PostHoc):
    """tau-norm: w_c / ||w_c||^tau, no training."""

    name = "tau_norm"

    def make_adjuster(self, model):
        head = model.heads[self.head_name]
        if not hasattr(head, "fc"):  # a cosine head (its class norms are all 1) or experts: no single linear layer
            raise ConfigError(f"stages.{self.stage.name}: tau_norm re-scales a linear head's class norms, and head "
                              f"{self.head_name!r} is a {type(head).__name__}; use logit_adjust on it instead")
        return TauNorm()

    def fit(self, model):
        return self.choose_tau(model)


@register
class PostHocLogitAdjustment(PostHoc):
    """z_c - tau * log pi_c with pi the training label prior, no training."""

    name = "logit_adjust"

    def make_adjuster(self, model):
        return LogitAdjust(self.ctx.num_classes)

    def fit(self, model):
        model.adjust[self.head_name].log_prior.copy_(log_prior(self.ctx.train_counts))
        return self.choose_tau(model)


@register
class NearestClassMeanClassifier(PostHoc):
    """NCM: cosine to the class means of L2-normalised training features (no augmentation)."""

    name = "ncm"
    Params = HeadParams

    def make_adjuster(self, model):
        return NearestClassMean(self.ctx.num_classes, model.feature_dim)

    def fit(self, model):
        train = self.ctx.data.train
        feats = F.normalize(self.ctx.predict_split(model, train, lambda m, x: m.features(x)).float(), dim=1)
        labels = torch.as_tensor(train.labels)
        means = torch.zeros(self.ctx.num_classes, feats.shape[1]).index_add_(0, labels, feats)
        means /= torch.bincount(labels, minlength=self.ctx.num_classes).clamp(min=1)[:, None]
        model.adjust[self.head_name].means.copy_(means)
        return {"class_means": "L2-normalised training features, no augmentation", "num_images": len(labels)}


@register
class EvaluateHead(AdjustedHead):
    """Score another head of an earlier stage as it is (e.g. SSD's III-soft): no training, no adjuster."""

    name = "evaluate"
    default_train = "none"

    def build_model(self):
        return CrossEntropy.build_model(self)

    def fit(self, model):
        return {"head": self.head_name}


@dataclass
class LALossParams:
    tau: float = 1.0


@register
class LogitAdjustedLoss(CrossEntropy):
    """Logit-adjusted loss (Menon et al. 2021, Eq. 10): CE(z + tau * log pi, y); test with the raw z."""

    name = "la_loss"
    Params = LALossParams

    def prepare(self, model):
        super().prepare(model)
        self.log_prior = log_prior(self.ctx.train_counts, self.ctx.runtime.device)

    def terms(self):
        head = self.head_name
        return {"la_ce": Term(1.0, lambda classifier, out, b: class_ce(out[head].float() + self.params.tau * self.log_prior, b), heads=(head,))}
