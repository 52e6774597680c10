"""Mixup and CutMix of a training batch, on its device: ``x, mix = mixer(x, y, seed)``.

One lambda and one permutation per batch (BalPoE, MiSLAS): lambda is drawn on the host from the step's
seed, so no device sync, and the permutation from a device generator of the same seed, so a resumed run
mixes exactly as an uninterrupted one. Losses then score both label sets (``longtail.losses.class_ce``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixedLabels:
    """x = lam * x_a + (1 - lam) * x_b: ``y`` holds the labels of the b images, ``lam`` the a images' share."""

    y: torch.Tensor
    lam: float


def cutmix_box(lam: float, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: a box of area (1 - lam) * h * w, centred uniformly, clipped at the borders."""
    cut = math.sqrt(1.0 - lam)
    bh, bw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return max(cy - bh // 2, 0), min(cy + bh // 2, h), max(cx - bw // 2, 0), min(cx + bw // 2, w)


class Mixer:
    """Mixes batches by a stage's ``mix`` config (kind, alpha, cutmix_alpha, switch_prob, until_epoch)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def active(self, epoch: int) -> bool:
        c = self.cfg
        return c.kind != "none" and (c.until_epoch is None or epoch < c.until_epoch)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, MixedLabels]:
        c, rng = self.cfg, np.random.default_rng(seed)
        cutmix = c.kind == "cutmix" or (c.kind == "mixup_cutmix" and rng.random() < c.switch_prob)
        g = torch.Generator(device=x.device)
        g.manual_seed(seed)
        perm = torch.randperm(len(x), generator=g, device=x.device)
        if cutmix:
            lam = float(rng.beta(c.cutmix_alpha, c.cutmix_alpha))
            y0, y1, x0, x1 = cutmix_box(lam, x.shape[2], x.shape[3], rng)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[2] * x.shape[3])  # the pasted area's true share
        else:
            lam = float(rng.beta(c.alpha, c.alpha))
            x = x.mul(lam).add_(x[perm], alpha=1.0 - lam)
        return x, MixedLabels(y[perm], lam)
