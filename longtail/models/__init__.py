"""Backbones (feature extractors) and classifier heads, built by name."""

from __future__ import annotations

import inspect

from torch import nn

from longtail.errors import ConfigError
from longtail.models import resnet as _resnet
from longtail.models import resnet_cifar as _cifar
from longtail.models.heads import CosineHead, LinearHead, LinearNeck
from longtail.models.resnet import ResNet, load_torchvision_state_dict
from longtail.models.resnet_cifar import CifarResNet, cifar_resnet

BACKBONES = {
    # CIFAR (32x32 input, option-A shortcuts, 64-d feature)
    "resnet20": _cifar.resnet20,
    "resnet32": _cifar.resnet32,
    "resnet44": _cifar.resnet44,
    "resnet56": _cifar.resnet56,
    "resnet110": _cifar.resnet110,
    # ImageNet-style (torchvision-compatible names)
    "resnet10": _resnet.resnet10,
    "resnet18": _resnet.resnet18,
    "resnet34": _resnet.resnet34,
    "resnet50": _resnet.resnet50,
    "resnet101": _resnet.resnet101,
    "resnet152": _resnet.resnet152,
    "resnext50_32x4d": _resnet.resnext50_32x4d,
}

HEADS = {"linear": LinearHead, "cosine": CosineHead}


def _call(kind: str, name: str, fn, *args, **kwargs):
    # Check the options up front so a typo in a recipe is reported as a config
    # error rather than a TypeError traceback from deep inside a constructor.
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad options for {kind} {name!r}: {e}") from None
    return fn(*args, **kwargs)


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    return _call("backbone", name, BACKBONES[name], **kwargs)


def build_head(kind: str, in_dim: int, num_classes: int, **kw) -> nn.Module:
    if kind not in HEADS:
        raise ConfigError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    return _call("head", kind, HEADS[kind], in_dim, num_classes, **kw)


__all__ = [
    "BACKBONES", "HEADS", "build_backbone", "build_head",
    "CifarResNet", "cifar_resnet", "ResNet", "load_torchvision_state_dict",
    "LinearHead", "CosineHead", "LinearNeck",
]
