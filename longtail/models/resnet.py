"""ImageNet-style ResNets / ResNeXt without the classifier.

Parameter names follow torchvision (conv1, bn1, layer1..layer4, downsample.0/1)
so torchvision checkpoints load with :func:`load_torchvision_state_dict`.
Bottlenecks put the stride on the 3x3 conv ("ResNet v1.5"), as torchvision does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from longtail.errors import CheckpointError
from longtail.models.pretrained import resolve_weights


def _conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1, base_width=64")
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Backbone only: returns the globally pooled (N, feature_dim) feature."""

    def __init__(self, block, layers, groups=1, width_per_group=64,
                 zero_init_residual: bool = False):
        super().__init__()
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512 * block.expansion
        self.arch: str | None = None  # set by the named builders: which published weights fit

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block is initially
            # the identity (Goyal et al. 2017); helps large-batch training.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(_conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = out
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups,
                                base_width=self.base_width))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _named(model: ResNet, arch: str) -> ResNet:
    model.arch = arch
    return model


def resnet10(zero_init_residual: bool = False) -> ResNet:
    return _named(ResNet(BasicBlock, [1, 1, 1, 1], zero_init_residual=zero_init_residual), "resnet10")


def resnet18(zero_init_residual: bool = False) -> ResNet:
    return _named(ResNet(BasicBlock, [2, 2, 2, 2], zero_init_residual=zero_init_residual), "resnet18")


def resnet34(zero_init_residual: bool = False) -> ResNet:
    return _named(ResNet(BasicBlock, [3, 4, 6, 3], zero_init_residual=zero_init_residual), "resnet34")


def resnet50(zero_init_residual: bool = False) -> ResNet:
    return _named(ResNet(Bottleneck, [3, 4, 6, 3], zero_init_residual=zero_init_residual), "resnet50")


def resnet101(zero_init_residual: bool = False) -> ResNet:
    return _named(ResNet(Bottleneck, [3, 4, 23, 3], zero_init_residual=zero_init_residual), "resnet101")


def resnet152(zero_init_residual: bool = False) -> ResNet:
    return _named(ResNet(Bottleneck, [3, 8, 36, 3], zero_init_residual=zero_init_residual), "resnet152")


def resnext50_32x4d(zero_init_residual: bool = False) -> ResNet:
    return _named(ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4,
                         zero_init_residual=zero_init_residual), "resnext50_32x4d")


def _list(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _brief(e: Exception) -> str:
    # The CLI prints errors on one line; torch's load errors span several.
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _read_state_dict(path: str):
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{path}: reading .safetensors needs the 'safetensors' package "
                "(pip install safetensors), or convert the file to .pth"
            ) from None
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read safetensors file ({_brief(e)})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # Truncated zips, non-pickles and pickles of arbitrary objects all
        # land here; the full original error stays chained for debugging.
        raise CheckpointError(f"{path}: cannot read checkpoint ({_brief(e)})") from e


def load_torchvision_state_dict(model: nn.Module, path) -> list[str]:
    """Load a torchvision-style ResNet checkpoint into ``model``, minus ``fc``.

    Accepts a raw state dict or one wrapped under 'state_dict' / 'model', with
    or without a DataParallel 'module.' prefix. Everything except ``fc.*`` must
    match the model exactly. Returns the dropped keys. ``path`` may also name published weights
    (``imagenet``, ``resnet18.IMAGENET1K_V1``): see :mod:`longtail.models.pretrained`.
    """
    path = resolve_weights(path, getattr(model, "arch", None))
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    sd = _read_state_dict(path)
    if isinstance(sd, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in sd and isinstance(sd[wrapper], Mapping):
                sd = sd[wrapper]
                break
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{path}: entries are not named tensors: {_list(bad)}")

    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    dropped = [k for k in sd if k.startswith("fc.")]
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}

    own = model.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 (incl. the original torchvision
    # ImageNet weights) have no BN step counter; it is unused at eval anyway.
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        raise CheckpointError(f"{path}: state dict does not match the model; " + "; ".join(parts))
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sd if sd[k].shape != own[k].shape]
    if shapes:
        raise CheckpointError(f"{path}: shape mismatch: {_list(shapes)}")
    for k in own:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k]
    model.load_state_dict(sd, strict=True)
    return dropped
