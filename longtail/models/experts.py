"""Experts on one CIFAR ResNet: a shared stem, per-expert later stages and class heads (RIDE, BalPoE).

The feature is the experts' pooled features side by side, so the rest of the framework sees one
backbone and one class head; the head's forward is the mean of the experts' logits, BalPoE's test rule.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .resnet_cifar import CifarResNet


class ExpertsResNet(nn.Module):
    """conv1 + layer1 shared, then ``experts`` copies of layer2 + layer3, each pooled to its own 64-d feature."""

    def __init__(self, make: Callable[[], nn.Module], experts: int):
        super().__init__()
        trunks = [make() for _ in range(experts)]
        if not isinstance(trunks[0], CifarResNet):
            raise ConfigError(f"model.experts: needs a CIFAR ResNet backbone (resnet20/32/44/56/110), got {type(trunks[0]).__name__}")
        self.conv1, self.bn1, self.layer1 = trunks[0].conv1, trunks[0].bn1, trunks[0].layer1
        self.branches = nn.ModuleList(nn.Sequential(t.layer2, t.layer3) for t in trunks)
        self.experts, self.expert_dim = experts, trunks[0].feature_dim
        self.feature_dim = self.expert_dim * experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(F.relu(self.bn1(self.conv1(x))))
        return torch.cat([torch.flatten(F.adaptive_avg_pool2d(b(x), 1), 1) for b in self.branches], 1)


class ExpertsHead(nn.Module):
    """One class head per expert, each on its own slice of the feature; ``forward`` averages their logits."""

    def __init__(self, make: Callable[[int], nn.Module], experts: int, expert_dim: int):
        super().__init__()
        self.members = nn.ModuleList(make(expert_dim) for _ in range(experts))

    def each(self, feat: torch.Tensor) -> list[torch.Tensor]:
        """Every expert's logits, in expert order."""
        return [h(f) for h, f in zip(self.members, feat.chunk(len(self.members), dim=1))]

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.each(feat)).mean(0)
