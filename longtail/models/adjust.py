"""Logit adjusters: what the decoupled re-balancers put on top of a trained head.

Each adjuster maps ``(logits, feature, head)`` to new logits and lives in
``Classifier.adjust[<head name>]``. The head's own weights keep their names, so
an earlier stage's checkpoint loads unchanged and the adjuster's parameters or
buffers travel in the stage's own checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LWSScale(nn.Module):
    """Learnable weight scaling (Kang et al. 2020): z_c = f_c * (w_c . v + b_c), bias included as in the official code."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, logits, feat, head):
        return logits * self.scale


class TauNorm(nn.Module):
    """tau-normalised classifier: z_c = (w_c / ||w_c||^tau) . v, no bias.

    The official Decoupling code scores tau-norm without the bias: a bias learned on imbalanced data
    would partly undo the balancing. So tau = 0 is the plain head less its bias.
    """

    def __init__(self, tau: float = 0.0):
        super().__init__()
        self.register_buffer("tau", torch.tensor(float(tau)))

    def forward(self, logits, feat, head):
        fc = head.fc
        w = fc.weight / fc.weight.norm(dim=1, keepdim=True).pow(self.tau)
        return F.linear(feat, w.to(feat.dtype))


class LogitAdjust(nn.Module):
    """Post-hoc logit adjustment (Menon et al. 2021): z_c - tau * log pi_c, pi the training prior."""

    def __init__(self, num_classes: int, tau: float = 0.0):
        super().__init__()
        self.register_buffer("tau", torch.tensor(float(tau)))
        self.register_buffer("log_prior", torch.zeros(num_classes))

    def forward(self, logits, feat, head):
        return logits - self.tau * self.log_prior.to(logits.dtype)


class NearestClassMean(nn.Module):
    """NCM: cosine similarity of the L2-normalised feature to the class means of L2-normalised training features."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_classes, dim))

    def forward(self, logits, feat, head):
        return F.normalize(feat.float(), dim=1) @ F.normalize(self.means, dim=1).t()


@torch.no_grad()
def class_weight_norms(model: nn.Module, head_name: str, adjusted: bool = True) -> torch.Tensor | None:
    """||w_c|| of a head's class weights; with ``adjusted``, as scaled by LWS or tau-norm, which is what
    the logits see (Kang et al. 2020, Fig. 2). None for models without class heads (ensembles)."""
    heads = getattr(model, "heads", None)
    if heads is None or head_name not in heads:
        return None
    head = heads[head_name]
    w = head.fc.weight if hasattr(head, "fc") else getattr(head, "weight", None)
    if w is None:
        return None
    norms = w.detach().float().norm(dim=1)
    adjuster = model.adjust[head_name] if adjusted and head_name in model.adjust else None
    if isinstance(adjuster, LWSScale):
        norms = norms * adjuster.scale.detach().float().abs()
    elif isinstance(adjuster, TauNorm):
        norms = norms.pow(1.0 - adjuster.tau.float())
    return norms.cpu()
