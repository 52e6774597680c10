"""SSD: Self Supervision to Distillation (Li, Wang, Wu; ICCV 2021).

The method is a pipeline of stages (see ``recipes/*/ssd.yaml``):

* I   ``ssd_ssl``: instance sampling, a1 * CE + a2 * L_self (rotation on CIFAR, MoCo v2 on ImageNet / iNat);
* II  ``lws`` on the frozen stage-I model: the teacher;
* III ``ssd_distill``: a re-initialised network, hard head (CE) + soft head (KD from the online teacher);
* IV  ``lws`` on the stage-III hard head.

This file holds stages I and III; II and IV are the LWS re-balancer.

MoCo's key encoder and BatchNorm (stage I on ImageNet / iNat): if the momentum encoder normalised the
same batch of images as the query encoder, BN statistics would leak the contrastive task. MoCo
shuffles the batch across GPUs for the key encoder ("shuffle BN"); SSD's official ``builder.py`` does
the same and so assumes several GPUs; MoCo's single-GPU CIFAR-10 demo instead splits the key batch
into 8 BN groups. We do both, by where we run: under DDP the global batch is shuffled across ranks
with a permutation that rank 0 draws from its per-step generator; on one device the batch is
shuffled and the key encoder's BN runs over ``moco_bn_splits`` groups (``models/shuffle_bn.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import choice

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import random_rotate90
from ..errors import ConfigError
from ..losses import class_ce
from ..models.moco import MoCo
from .base import Feed, Method, Term, register, unwrap


def kd_loss(student_logits: torch.Tensor, soft_targets: torch.Tensor, T: float) -> torch.Tensor:
    """SSD Eq. 4: KD = -T^2 * sum_i p_i * log softmax(z_soft / T)_i, averaged over the batch."""
    return -(T * T) * (soft_targets * F.log_softmax(student_logits / T, dim=1)).sum(dim=1).mean()


@dataclass
class SSLParams:
    self_sup: str = choice("rotation", "moco", "none")
    a1: float = 1.0  # weight of CE
    a2: float = 1.0  # weight of L_self
    # MoCo v2 (instance discrimination)
    moco_dim: int = 128
    moco_queue: int = 65536
    moco_momentum: float = 0.999
    moco_tau: float = 0.2
    moco_mlp: bool = True
    moco_mask_same_label: bool = False  # official code's extra: drop same-label negatives (off in the paper)
    key_augment: str = "moco_v2"  # augmentation of the momentum encoder's input only
    moco_bn_splits: int = 8  # one device: key-encoder BN groups (MoCo's CIFAR demo); unused under DDP (shuffle across ranks)


@register
class SSDSelfSupervised(Method):
    """Stage I: L = a1 * CE(h(f(x)), y) + a2 * L_self (SSD Eq. 1)."""

    name = "ssd_ssl"
    Params = SSLParams

    def __init__(self, ctx):
        super().__init__(ctx)
        if self.params.self_sup == "moco":
            ctx.augment(self.params.key_augment)  # an unknown preset is a config error now, not at the first step
        if self.params.moco_bn_splits < 1:
            raise ConfigError(f"stages.{self.stage.name}.params.moco_bn_splits: must be a positive integer "
                              f"(1: one BN batch), got {self.params.moco_bn_splits}")

    def feeds(self):
        """MoCo's key view is cut beside the query, on the look-ahead thread."""
        views = {"key": self.params.key_augment} if self.params.self_sup == "moco" else {}
        return {"x": Feed(self.stage.sampler, views=views)}

    def build_model(self):
        model = super().build_model()
        if self.params.self_sup == "rotation":
            model.aux["rotation"] = nn.Linear(model.feature_dim, 4)
        elif self.params.self_sup == "moco":
            encoder = nn.Sequential(model.backbone, model.neck)
            model.aux["moco"] = MoCo(encoder, model.feature_dim, self.params.moco_dim, self.params.moco_queue,
                                     self.params.moco_momentum, self.params.moco_tau, self.params.moco_mlp, self.params.moco_bn_splits)
        return model

    def prepare(self, model):
        super().prepare(model)
        if self.params.self_sup == "moco":  # the engine has loaded any init: or pretrained weights by now
            model.aux["moco"].reset_keys(nn.Sequential(model.backbone, model.neck))

    def loss(self, model, batch, g):
        b, classifier = batch["x"], unwrap(model)
        n = len(b.y)
        if self.params.self_sup == "rotation":
            x_rot, k = random_rotate90(b.x, g)
            out = model(torch.cat([b.x, x_rot]))
            ce = class_ce(out["main"][:n], b)
            l_self = F.cross_entropy(classifier.aux["rotation"](out["feat"][n:]).float(), k)
        else:
            out = model(b.x)
            ce = class_ce(out["main"], b)
            if self.params.self_sup == "none":
                return ce, {"ce": ce.detach()}
            moco = classifier.aux["moco"]
            k = moco.keys(nn.Sequential(classifier.backbone, classifier.neck), b.views["key"], g)
            l_self = moco.loss(out["feat"], k, b.y if self.params.moco_mask_same_label else None)
            moco.enqueue(k, b.y)
        loss = self.params.a1 * ce + self.params.a2 * l_self
        return loss, {"ce": ce.detach(), "ssl": l_self.detach()}


@dataclass
class DistillParams:
    teacher: str = "stage2"  # the stage whose model gives the soft labels (online, eval mode)
    T: float = 2.0
    l1: float = 1.0  # weight of CE on the hard head
    l2: float = 1.0  # weight of KD on the soft head
    mode: str = choice("decoupled", "coupled", "single")  # hard + soft heads | one head, both losses | one head, KD only


@register
class SSDDistill(Method):
    """Stage III: L = l1 * CE(y, z_hard) + l2 * KD(softmax(z_teacher / T), z_soft) (SSD Eqs. 3-5)."""

    name = "ssd_distill"
    Params = DistillParams

    def __init__(self, ctx):
        super().__init__(ctx)
        if self.params.teacher not in ctx.artifacts and self.params.teacher not in [s.name for s in ctx.recipe.stages]:
            raise ConfigError(f"stages.{self.stage.name}.params.teacher: no stage named {self.params.teacher!r}")

    def head_widths(self):
        c = self.ctx.num_classes
        return {"hard": c, "soft": c} if self.params.mode == "decoupled" else {"main": c}

    @property
    def head_name(self):
        return "hard" if self.params.mode == "decoupled" else "main"

    def prepare(self, model):
        super().prepare(model)
        self.teacher_method, self.teacher = self.ctx.load_teacher(self.params.teacher)

    def soft_labels(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.softmax(self.teacher_method.predict(self.teacher, x).float() / self.params.T, dim=1)

    def terms(self):
        hard, soft = self.head_name, "soft" if self.params.mode == "decoupled" else "main"
        # The teacher scores the same augmented batch as the student.
        kd = Term(1.0 if self.params.mode == "single" else self.params.l2,
                  lambda classifier, out, b: kd_loss(out[soft].float(), self.soft_labels(b.x), self.params.T), heads=(soft,))
        if self.params.mode == "single":
            return {"kd": kd}
        return {"ce": Term(self.params.l1, lambda classifier, out, b: class_ce(out[hard], b), heads=(hard,)), "kd": kd}

    def report(self, model):
        """SSD Fig. 5: per-class sum of the teacher's soft labels over the training set, next to the
        original (instance) and class-balanced label distributions."""
        train = self.ctx.data.train
        p = self.ctx.predict_split(self.teacher, train, lambda m, x: F.softmax(self.teacher_method.predict(m, x).float() / self.params.T, dim=1))
        counts = self.ctx.train_counts
        dist = {
            "original": [int(c) for c in counts],
            "class_balanced": [round(float(counts.sum()) / len(counts), 4)] * len(counts),
            "distilled": [round(float(v), 4) for v in p.sum(0)],
            "T": self.params.T,
        }
        if self.ctx.out_dir is not None:
            from ..report.plots import plot_label_distribution

            png = plot_label_distribution(dist, self.ctx.out_dir / "label_distribution.png")
            dist["png"] = "label_distribution.png" if png else None  # beside the stage's record, not this machine's path
        return {"label_distribution": dist}
