"""BalanceAux: "To Balance or Not to Balance" (Zhang, Liu, Wang, Shen), Algorithm 1.

One network, three heads, trained jointly; each step draws two batches:

* ``h`` (the class head, ``main``) on B_CBS, class-balanced (k = S/Z classes x Z images);
* ``h_a`` (``aux.rrs_head``) on B_RRS, instance-sampled (S images);
* ``h_s`` (``aux.rotation``), 4-way, on Rotate([B_CBS; B_RRS]) with one random angle per image.

L = l1 * CE(h) + l2 * CE(h_a) + l3 * CE(h_s), 0.5 : 1 : 1. Only f and h are exported (``aux`` is training-only).

Batching: all inputs of a step go through the backbone in ONE call, [B_CBS; B_RRS; Rot(B_CBS; B_RRS)].
The paper trains one feature extractor on the union of the three inputs, so BatchNorm normalising over
that union is the model being trained; separate calls would give each input its own batch statistics,
triple the small-kernel launches, and make the running statistics depend on the call order.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import choice

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import random_rotate90, rotate90
from ..errors import ConfigError
from ..losses import class_ce
from ..models.adjust import class_weight_norms
from .base import Feed, Method, Term, add_aux, register, repeat_labels, split_rows, sum_terms, unwrap


@dataclass
class BalanceAuxParams:
    l1: float = 0.5  # class-balanced primary head
    l2: float = 1.0  # instance-sampled auxiliary head
    l3: float = 1.0  # rotation head
    rotation: str = choice("task", "augment", "off")  # 4-way rotation head | rotated copies as class-labelled images | none


@register
class BalanceAux(Method):
    name = "balance_aux"
    Params = BalanceAuxParams

    def __init__(self, ctx):
        super().__init__(ctx)
        if min(self.params.l1, self.params.l2, self.params.l3) < 0 or self.params.l1 + self.params.l2 == 0:
            raise ConfigError(f"stages.{self.stage.name}.params: loss weights must be >= 0 and l1 + l2 > 0")

    SAMPLERS = {"cbs": "class_balanced", "rrs": "instance"}

    def feeds(self):
        """The streams the terms read: a weight of 0 drops its stream (0 : 1 is RRS-only, 1 : 0 CBS-only)."""
        return {t.feed: Feed(self.SAMPLERS[t.feed]) for t in self.terms().values()}

    def terms(self):
        """The two class-head CEs, also for a ``compose`` stage. The rotation term needs rotated copies in the
        same backbone call, so ``loss`` adds it."""
        c, terms = self.ctx.num_classes, {}
        if self.params.l1 > 0:
            terms["cbs"] = Term(self.params.l1, lambda classifier, out, b: class_ce(out["main"], b), feed="cbs", heads=("main",))
        if self.params.l2 > 0 and self.params.l1 > 0:
            terms["rrs"] = Term(self.params.l2, lambda classifier, out, b: class_ce(classifier.aux["rrs_head"](out["feat"]), b),
                                feed="rrs", aux={"rrs_head": lambda d: nn.Linear(d, c)})
        elif self.params.l2 > 0:  # RRS-only: the instance stream trains h itself
            terms["rrs"] = Term(self.params.l2, lambda classifier, out, b: class_ce(out["main"], b), feed="rrs", heads=("main",))
        return terms

    def build_model(self):
        model = super().build_model()
        add_aux(model, self.terms())
        if self.params.rotation == "task":
            model.aux["rotation"] = nn.Linear(model.feature_dim, 4)
        return model

    def beyond_terms(self):
        return {"task": "the rotation term (params.rotation: task)", "augment": "rotated copies (params.rotation: augment)"}.get(self.params.rotation, "")

    def loss(self, model, batch, g):
        classifier, terms = unwrap(model), self.terms()
        feeds = [t.feed for t in terms.values()]
        sizes = [len(batch[f].y) for f in feeds]
        x, copies = torch.cat([batch[f].x for f in feeds]), 1
        if self.params.rotation == "task":
            x_rot, k = random_rotate90(x, g)
            x = torch.cat([x, x_rot])
        elif self.params.rotation == "augment":
            # Every image in all four orientations, each keeping its class label.
            x = torch.cat([rotate90(x, torch.full((len(x),), r, device=x.device)) for r in range(4)])
            copies = 4
        out = model(x)  # one backbone call for every input of the step (see the module docstring)
        outs = dict(zip(feeds, split_rows(out, sizes, copies)))
        loss, parts = sum_terms(classifier, outs, {f: repeat_labels(batch[f], copies) for f in feeds}, terms)
        if self.params.rotation == "task":
            l_ss = F.cross_entropy(classifier.aux["rotation"](out["feat"][sum(sizes):]).float(), k)
            loss = loss + self.params.l3 * l_ss
            parts["ss"] = l_ss.detach()
        return loss, parts

    def report(self, model):
        """The data behind the paper's Fig. 4: the L2 norm of each class's weight vector in h."""
        return {"classifier_weight_norms": [round(float(v), 5) for v in class_weight_norms(model, "main", adjusted=False)],
                "train_counts": [int(c) for c in self.ctx.train_counts]}
