"""ProCo's parts (Du et al., TPAMI 2024): a projection head and a per-class von Mises-Fisher estimate of its
normalised features, from which the expected contrastive similarity has a closed form.

Each class c is a vMF(mu_c, kappa_c) on the unit sphere in p dimensions. Its normaliser is
C_p(k) = k^nu / ((2 pi)^(nu + 1) I_nu(k)), nu = p/2 - 1, so for a feature z and temperature t

    E_{z' ~ vMF(mu_c, kappa_c)} exp(z . z' / t) = C_p(kappa_c) / C_p(||kappa_c mu_c + z / t||)   (ProCo Eq. 13),

and the log of it is the "ProCo logit" of class c. mu_c and kappa_c come from the first moment of the
class's detached features: a running mean over the previous epoch and the current one, as the official
code's two estimators keep it (LeapLabTHU/ProCo loss/proco.py), with kappa = p R / (1 - R^2), R its norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .shuffle_bn import all_gather_cat

KAPPA_MAX = 1e5  # the official code's cap (also used when R >= 1)


def log_bessel_iv(nu: float, x: torch.Tensor) -> torch.Tensor:
    """log I_nu(x) for x > 0 by the uniform (Debye) expansion in 1/nu to the third term (DLMF 10.41.3):
    within 1e-9 of the power series at nu = 63 (ProCo's p = 128), at every x (tests/test_proco.py); differentiable.
    Meant for large orders: the error is 1e-6 at nu = 10 and 3e-4 at nu = 2."""
    z = x / nu
    s = torch.sqrt(1 + z * z)
    t = 1 / s
    eta = s + torch.log(z / (1 + s))
    t2 = t * t
    u1 = t * (3 - 5 * t2) / 24
    u2 = t2 * (81 - 462 * t2 + 385 * t2 * t2) / 1152
    u3 = t * t2 * (30375 - 369603 * t2 + 765765 * t2 * t2 - 425425 * t2 ** 3) / 414720
    return nu * eta - 0.5 * math.log(2 * math.pi * nu) - 0.5 * torch.log(s) + torch.log1p(u1 / nu + u2 / nu ** 2 + u3 / nu ** 3)


def log_vmf_norm(kappa: torch.Tensor, p: int) -> torch.Tensor:
    """log C_p(kappa) up to a constant that cancels in a ratio: nu log kappa - log I_nu(kappa)."""
    nu = p / 2 - 1
    return nu * torch.log(kappa) - log_bessel_iv(nu, kappa)


class ClassVMF(nn.Module):
    """The per-class mean of normalised features, over the previous epoch and the current one (buffers, so a
    checkpoint resumes it exactly). ``update`` folds in a batch; ``expected_logits`` scores features.

    No step reads a value back to the host (the epoch test is a device-side select), and every rank folds in
    the same all-gathered features from the same start, so the ranks' estimates stay equal without a broadcast.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.dim = dim
        # The official start, random directions of norm 0.9, drawn once (seeded like every fresh weight): a new
        # epoch restarts its window from it (the official code draws anew; it only shows for a class no image of
        # which was seen in a whole epoch, which instance sampling never leaves).
        self.register_buffer("start", 0.9 * F.normalize(torch.randn(num_classes, dim, dtype=torch.float64), dim=1))
        self.register_buffer("mean_old", self.start.clone())
        self.register_buffer("mean_new", self.start.clone())
        self.register_buffer("count_old", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("count_new", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("epoch", torch.tensor(-1))  # the epoch whose features mean_new holds

    @torch.no_grad()
    def update(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        """Fold normalised features ``z`` of labels ``y`` (every rank's) into both windows; a new epoch first
        moves the current window to the old one and restarts the current one, as the official epoch hook."""
        new = self.epoch != epoch  # the step's own epoch, so a resumed run rotates exactly where it did
        self.mean_old.copy_(torch.where(new, self.mean_new, self.mean_old))
        self.count_old.copy_(torch.where(new, self.count_new, self.count_old))
        self.mean_new.copy_(torch.where(new, self.start, self.mean_new))
        self.count_new.mul_((~new).double())
        self.epoch.fill_(epoch)
        z, y = all_gather_cat(z.detach().double()), all_gather_cat(y)
        # sums by class as one matmul: no atomics, and no host read (F.one_hot checks its labels on the host)
        onehot = torch.zeros(len(y), len(self.count_new), dtype=torch.float64, device=z.device).scatter_(1, y[:, None], 1.0)
        n = onehot.sum(0)
        batch_mean = (onehot.t() @ z) / n.clamp(min=1)[:, None]
        for mean, count in ((self.mean_old, self.count_old), (self.mean_new, self.count_new)):
            w = (n / (n + count)).nan_to_num(0.0)[:, None]  # a running mean: a class's batch weighs n / (n + seen)
            mean.mul_(1 - w).add_(w * batch_mean)
            count.add_(n)

    def kappa(self) -> torch.Tensor:
        r = self.mean_old.norm(dim=1)
        k = self.dim * r / (1 - r * r)
        # capped as the official code caps it; a zero mean (kappa 0) would make log I_nu -inf, so kappa >= 1e-6
        return torch.where((k > KAPPA_MAX) | (k < 0), torch.full_like(k, KAPPA_MAX), k).clamp(min=1e-6)

    def expected_logits(self, z: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, C): log E exp(z . z' / t) under each class's vMF (the module docstring), in float64."""
        kappa = self.kappa()
        mu = F.normalize(self.mean_old, dim=1)
        k_tilde = (kappa[:, None] * mu + z.double()[:, None, :] / temperature).norm(dim=2)  # (B, C)
        return log_vmf_norm(kappa, self.dim)[None, :] - log_vmf_norm(k_tilde, self.dim)


class ProCoHead(nn.Module):
    """The training-only projection (ProCo's CIFAR head: Linear, BN, ReLU, Linear, then L2-normalised) and
    its class vMF estimate."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 512, dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.vmf = ClassVMF(num_classes, dim)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(feat).float(), dim=1)
