"""Classifier heads and an optional neck between backbone and head.

Every head exposes ``in_dim``, ``num_classes`` and ``reset_parameters()`` so
two-stage methods (cRT) can re-initialise the classifier generically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn



class LinearHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.fc = nn.Linear(in_dim, num_classes, bias=bias)

    def reset_parameters(self) -> None:
        self.fc.reset_parameters()

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.fc(feat)


class CosineHead(nn.Module):
    """Logits ``scale * cos(w_c, v)``: removes the classifier-norm bias toward
    head classes. ``scale`` restores a usable softmax temperature."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 20.0, learn_scale: bool = False):
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        # Fixed at 20 in the CBD code; learnable when asked.
        self.scale = nn.Parameter(torch.tensor(float(scale))) if learn_scale else float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(feat, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, scale={float(self.scale):g}"


class LinearNeck(nn.Sequential):
    """Linear projection after pooling (e.g. OLTR's 512-d FC), optionally ReLU'd."""

    def __init__(self, in_dim: int, out_dim: int, relu: bool = False):
        layers = [nn.Linear(in_dim, out_dim)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.feature_dim = out_dim

    def reset_parameters(self) -> None:
        self[0].reset_parameters()
