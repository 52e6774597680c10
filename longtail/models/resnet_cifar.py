"""CIFAR ResNets (He et al. 2016, sec. 4.2) as used by LDAM-DRW.

Three stages of ``n`` BasicBlocks with 16/32/64 channels, depth = 6n + 2.
Shortcuts are "option A": parameter-free subsampling plus zero-padded channels,
which is what the long-tailed CIFAR literature reports numbers with (the
ResNet-32 backbone has 0.46M parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import ConfigError


class PadShortcut(nn.Module):
    """Option-A shortcut: take every other pixel and zero-pad the new channels.

    The padding is split evenly before and after the input channels, as in the
    LDAM-DRW reference, so a checkpoint trained there behaves identically here.
    """

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        extra = planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(in_planes, planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Backbone only: returns the globally pooled (N, 64) feature."""

    def __init__(self, depth: int = 32, in_channels: int = 3):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth!r}"
            )
        n = (depth - 2) // 6
        self.depth = depth
        self.feature_dim = 64
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self._in_planes = 16
        self.layer1 = self._make_stage(16, n, stride=1)
        self.layer2 = self._make_stage(32, n, stride=2)
        self.layer3 = self._make_stage(64, n, stride=2)
        del self._in_planes
        # LDAM initialises every conv with Kaiming-normal (fan_in); BN keeps
        # PyTorch's defaults.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def cifar_resnet(depth: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(depth, in_channels=in_channels)


def resnet20(**kw) -> CifarResNet:
    return CifarResNet(20, **kw)


def resnet32(**kw) -> CifarResNet:
    return CifarResNet(32, **kw)


def resnet44(**kw) -> CifarResNet:
    return CifarResNet(44, **kw)


def resnet56(**kw) -> CifarResNet:
    return CifarResNet(56, **kw)


def resnet110(**kw) -> CifarResNet:
    return CifarResNet(110, **kw)
