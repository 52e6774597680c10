"""CBD: Class-Balanced Distillation (Iscen, Araujo, Gong, Schmid; BMVC 2021).

Stage 1 trains K teachers with instance sampling (the ``ce`` method, a cosine head, standard or
data-augmentation ``augment``, a ``seed`` per teacher). Stage 2 is ``cbd``: a student from scratch,
class-balanced, standard augmentation, distilling the frozen teachers' features on the same batch.
``teacher_ensemble`` is the baseline that averages the teachers at test time.

Teachers are named by stage, or by the path of a ``final.pt`` from another run (trained elsewhere).
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

from ..config import choice

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import class_ce, log_prior
from ..models.classifier import build_classifier, load_exported
from .base import Method, Term, register
from .ssd import kd_loss


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """CBD Eq. 2's l_F: 1 - cos(v, v_teacher), averaged over the batch."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()


def teacher_target(features: list[torch.Tensor]) -> torch.Tensor:
    """CBD_ENS: the teachers' L2-normalised features, concatenated (Sec. 3.3)."""
    return torch.cat([F.normalize(f.float(), dim=1) for f in features], dim=1)


@dataclass
class CBDParams:
    teachers: list[str] = field(default_factory=list)  # stage names or paths to teachers' final.pt
    alpha: float = 0.4
    beta: float = 100.0
    distill: str = choice("feature", "logit", "hybrid")  # Eq. 2 (K teachers: Eq. 4) | Eq. 3 | both
    T: float = 2.0  # logit distillation temperature
    relu: bool = True  # ReLU after h: d -> d*K when K > 1 (official code)
    la_tau: float = 0.0  # > 0: CE is replaced by the logit-adjusted loss (CBD + LA)


@register
class ClassBalancedDistillation(Method):
    """L = (1 - alpha) * CE + alpha * beta * (1 - cos(h(v), [v_1; ...; v_K])) (CBD Eq. 4; Eq. 2 when K = 1)."""

    name = "cbd"
    Params = CBDParams

    def __init__(self, ctx):
        super().__init__(ctx)
        if not self.params.teachers:
            raise ConfigError(f"stages.{self.stage.name}.params.teachers: name at least one teacher stage or checkpoint")

    def build_model(self):
        k = len(self.params.teachers)
        cfg = copy.deepcopy(self.ctx.recipe.model)
        if k > 1:  # h: d -> d*K, and the classifier sits on h(v)
            probe = build_classifier(cfg, self.ctx.num_classes)
            cfg.neck_dim, cfg.neck_relu = probe.backbone.feature_dim * k, self.params.relu
        return build_classifier(cfg, self.ctx.num_classes, self.head_widths())

    def prepare(self, model):
        super().prepare(model)
        self.teachers = [self.ctx.load_teacher(ref) for ref in self.params.teachers]
        if self.params.la_tau > 0:
            self.log_prior = log_prior(self.ctx.train_counts, self.ctx.runtime.device)

    # Frozen teachers, eval mode, no autograd, on the student's augmented batch.
    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The feature target and the mean logits of the teachers on ``x``, from one forward per teacher.

        Hybrid distillation's two terms both ask on the same batch, so the answer is kept for that batch:
        the same tensor object (held weakly, so the batch is not kept alive) at the same in-place version.
        """
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        seen = getattr(self, "_seen", None)
        if seen is not None and seen[0]() is x and seen[1] == version:
            return seen[2]
        feats, logits = [], []
        for m, t in self.teachers:
            if type(m).predict is Method.predict:  # its prediction is a head of the plain forward
                out = t(x)
                feats.append(out["feat"])
                logits.append(out[m.head_name].float())
            else:  # e.g. an ensemble: its own prediction, and no single feature to distil
                feats.append(None)
                logits.append(m.predict(t, x).float())
        result = (None if any(f is None for f in feats) else teacher_target(feats)), torch.stack(logits).mean(0)
        self._seen = (weakref.ref(x), version, result)
        return result

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        v = self.teacher_outputs(x)[0]
        if v is None:
            raise ConfigError(f"stages.{self.stage.name}.params.teachers: a teacher that is an ensemble has no feature "
                              f"to distil; use distill: logit with it")
        return v

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_outputs(x)[1]

    def terms(self):
        a, head = self.params.alpha, self.head_name
        terms = {"ce": Term(1 - a, self.ce_term, heads=(head,))}
        if self.params.distill in ("feature", "hybrid"):
            terms["feat"] = Term(a * self.params.beta, self.feature_term)
        if self.params.distill in ("logit", "hybrid"):
            terms["kd"] = Term(a, lambda classifier, out, b: kd_loss(out[head].float(), F.softmax(self.teacher_logits(b.x) / self.params.T, dim=1), self.params.T),
                               heads=(head,))  # CBD Eq. 3, up to the teacher entropy
        return terms

    def ce_term(self, classifier, out, b):
        z = out[self.head_name].float()
        return class_ce(z + self.params.la_tau * self.log_prior if self.params.la_tau > 0 else z, b)

    def feature_term(self, classifier, out, b):
        v_hat = self.teacher_features(b.x)
        if out["feat"].shape[1] != v_hat.shape[1]:
            raise ConfigError(f"stages.{self.stage.name}: student feature has {out['feat'].shape[1]} dims but the "
                              f"teachers' concatenation has {v_hat.shape[1]}; use teachers with the student's backbone")
        return feature_distillation_loss(out["feat"], v_hat)


@dataclass
class EnsembleParams:
    teachers: list[str] = field(default_factory=list)


class Ensemble(nn.Module):
    """Several trained classifiers; the prediction is the mean of their softmax outputs."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)


@register
class TeacherEnsemble(Method):
    """The Teacher Ensemble baseline: average the teachers' class probabilities at test time."""

    name = "teacher_ensemble"
    default_train = "none"
    Params = EnsembleParams

    def build_model(self):
        if not self.params.teachers:
            raise ConfigError(f"stages.{self.stage.name}.params.teachers: name the teachers to average")
        self.members = [self.ctx.teacher_method(ref) for ref in self.params.teachers]
        return Ensemble([m.build_model() for m in self.members])

    def frozen_parts(self, model):
        return [model]

    def fit(self, model):
        for member, ref in zip(model.members, self.params.teachers):
            load_exported(member, self.ctx.teacher_state(ref))
        return {"members": list(self.params.teachers)}

    @torch.no_grad()
    def predict(self, model, x):
        probs = [F.softmax(m.predict(net, x).float(), dim=1) for m, net in zip(self.members, model.members)]
        return torch.stack(probs).mean(0)
