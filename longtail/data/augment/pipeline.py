"""The augmentation pipeline a recipe names: its ops' typed parameters, the presets, and :class:`Augment`.

An op's parameters are a dataclass, so a spec step is checked the way every other config value is
(types by ``longtail.config``, unknown keys refused); the only checks written here are ranges.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from longtail.config import from_dict
from longtail.errors import ConfigError

from . import color, geometry, perimage, policy


def _p(default=dataclasses.MISSING, check: Callable[[Any], bool] | None = None, needs: str = ""):
    """A parameter field; ``check`` is its range test and ``needs`` says what it must be."""
    return field(default=default, metadata={"check": check, "needs": needs})


_positive = dict(check=lambda v: v >= 1, needs="must be a positive integer")
_prob = dict(check=lambda v: 0.0 <= v <= 1.0, needs="must be a probability in [0, 1]")
_strength = dict(check=lambda v: (v >= 0 if isinstance(v, float) else 0 <= v[0] <= v[1]) and math.isfinite(sum([v] if isinstance(v, float) else v)),
                 needs="must be a number >= 0 or a pair [low, high] with 0 <= low <= high")


@dataclass
class RandomCrop:
    size: int = _p(**_positive)
    padding: int = _p(0, lambda v: v >= 0, "must be a non-negative integer")
    fill: float = _p(0.0, math.isfinite, "must be a number")


@dataclass
class RandomHflip:
    p: float = _p(0.5, **_prob)


@dataclass
class RandomResizedCrop:
    size: int = _p(**_positive)
    scale: tuple[float, float] = _p((0.08, 1.0), lambda v: 0 <= v[0] <= v[1] <= 1 and v[1] > 0,
                                     "must be a pair [low, high] with 0 <= low <= high <= 1, high > 0")
    ratio: tuple[float, float] = _p((3 / 4, 4 / 3), lambda v: 0 < v[0] <= v[1] < math.inf,
                                     "must be a pair [low, high] with 0 < low <= high")


@dataclass
class Resize:
    size: int = _p(**_positive)


@dataclass
class CenterCrop:
    size: int = _p(**_positive)


@dataclass
class CenterCropResize:
    size: int = _p(**_positive)
    crop_fraction: float = _p(0.875, lambda v: 0 < v <= 1, "must be a fraction in (0, 1]")


@dataclass
class ColorJitter:
    brightness: float | tuple[float, float] = _p(0.4, **_strength)
    contrast: float | tuple[float, float] = _p(0.4, **_strength)
    saturation: float | tuple[float, float] = _p(0.4, **_strength)
    hue: float | tuple[float, float] = _p(0.1, lambda v: (0 <= v <= 0.5) if isinstance(v, float) else -0.5 <= v[0] <= v[1] <= 0.5,
                                          "must be in [0, 0.5] or a pair within [-0.5, 0.5]")
    p: float = _p(0.8, **_prob)


@dataclass
class RandomGrayscale:
    p: float = _p(0.2, **_prob)


@dataclass
class GaussianNoise:
    sigma: float = _p(0.01, lambda v: 0 <= v < math.inf, "must be a non-negative number")


@dataclass
class GaussianBlur:
    kernel_size: int = _p(check=lambda v: v >= 1 and v % 2 == 1, needs="must be an odd positive integer")
    sigma: float | tuple[float, float] = _p((0.1, 2.0), lambda v: 0 < min(v) <= max(v) < math.inf,
                                            "must be positive (a number or a pair [low, high])")
    p: float = _p(0.5, **_prob)

    def __post_init__(self):
        if isinstance(self.sigma, float):
            self.sigma = (self.sigma, self.sigma)


_fill = dict(check=lambda v: 0.0 <= v <= 1.0, needs="must be a grey level in [0, 1]")


@dataclass
class AutoAugmentCifar:
    fill: float = _p(128 / 255, **_fill)  # the reference policy's grey 128 for uncovered pixels


@dataclass
class RandAugment:
    n: int = _p(2, **_positive)
    m: float = _p(10.0, lambda v: 0.0 <= v <= policy.MAX_LEVEL, "must be a magnitude in [0, 10]")
    mstd: float = _p(0.5, lambda v: 0.0 <= v < math.inf, "must be a non-negative number")
    p: float = _p(0.5, **_prob)
    fill: float = _p(128 / 255, **_fill)


@dataclass
class Cutout:
    holes: int = _p(1, **_positive)
    size: int = _p(16, **_positive)


@dataclass
class Normalize:
    mean: tuple[float, ...] = _p(needs="a list of numbers, one per channel")
    std: tuple[float, ...] = _p(check=lambda v: all(e > 0 for e in v), needs="must be positive")


@dataclass(frozen=True)
class Op:
    fn: Callable[..., torch.Tensor]  # the batched op
    params: type
    random: bool  # takes the generator as second argument
    per_image: Callable[..., torch.Tensor] | None = None  # the same op on an ImageList (sizing ops only)


#: Ops usable in a spec, by name. ``rotate90`` is left out: it needs or returns rotation labels.
OP_TABLE: dict[str, Op] = {
    "random_crop": Op(geometry.random_crop, RandomCrop, True),
    "random_hflip": Op(geometry.random_hflip, RandomHflip, True),
    "random_resized_crop": Op(geometry.random_resized_crop, RandomResizedCrop, True, perimage.random_resized_crop_images),
    "resize": Op(geometry.resize, Resize, False),
    "center_crop": Op(geometry.center_crop, CenterCrop, False),
    "center_crop_resize": Op(geometry.center_crop_resize, CenterCropResize, False, perimage.center_crop_resize_images),
    "color_jitter": Op(color.color_jitter, ColorJitter, True),
    "random_grayscale": Op(color.random_grayscale, RandomGrayscale, True),
    "gaussian_noise": Op(color.gaussian_noise, GaussianNoise, True),
    "gaussian_blur": Op(color.gaussian_blur, GaussianBlur, True),
    "autoaugment_cifar": Op(policy.autoaugment_cifar, AutoAugmentCifar, True),
    "randaugment": Op(policy.randaugment, RandAugment, True),
    "cutout": Op(policy.cutout, Cutout, True),
    "normalize": Op(color.normalize, Normalize, False),
}

#: Named specs. ``normalize`` steps take mean/std from the dataset; ``size`` is what
#: :meth:`Augment.preset` may override (``data.crop_size``). Each recipe says whose transform it is.
PRESETS: dict[str, list[dict[str, Any]]] = {
    "cifar": [  # LDAM-DRW, BBN, SSD, CBD: pad 4, random 32 crop, flip
        {"op": "random_crop", "size": 32, "padding": 4},
        {"op": "random_hflip"},
        {"op": "normalize"},
    ],
    # CBD's data-augmentation teacher: SimCLR-style colour distortion at strength s = 1
    # (0.8s for brightness/contrast/saturation, 0.2s for hue), plus a little pixel noise after normalisation.
    "cifar_strong": [
        {"op": "random_crop", "size": 32, "padding": 4},
        {"op": "random_hflip"},
        {"op": "color_jitter", "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8},
        {"op": "random_grayscale", "p": 0.2},
        {"op": "normalize"},
        {"op": "gaussian_noise", "sigma": 0.01},
    ],
    # ProCo, PaCo and NCL's CIFAR view (STRONG.md section 2): crop, flip, the CIFAR-10 AutoAugment
    # policy, Cutout of one 16-pixel hole on the [0, 1] image, then Normalize. The cutout step leaves
    # its size at the default 16: a "size" key here would be taken for the crop by preset(size=...).
    "cifar_autoaugment": [
        {"op": "random_crop", "size": 32, "padding": 4},
        {"op": "random_hflip"},
        {"op": "autoaugment_cifar"},
        {"op": "cutout", "holes": 1},
        {"op": "normalize"},
    ],
    # ProCo's (and PaCo's, BCL's) SimCLR-style CIFAR view for the contrastive branch (ProCo_cifar/main.py
    # augmentation_sim_cifar): RandomResizedCrop(32) at the default 8-100 % area, flip, ColorJitter(0.4, 0.4,
    # 0.4, 0.1) with p 0.8, grey with p 0.2; no blur.
    "cifar_simclr": [
        {"op": "random_resized_crop", "size": 32},
        {"op": "random_hflip"},
        {"op": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
        {"op": "random_grayscale", "p": 0.2},
        {"op": "normalize"},
    ],
    # timm's 'rand-n2-m10-mstd0.5' (STRONG.md section 3), the RandAugment of the ImageNet-LT, iNat and
    # Places recipes, after the CIFAR crop and flip; no CIFAR-LT code was found to use it.
    "cifar_randaugment": [
        {"op": "random_crop", "size": 32, "padding": 4},
        {"op": "random_hflip"},
        {"op": "randaugment", "n": 2, "m": 10.0, "mstd": 0.5},
        {"op": "normalize"},
    ],
    "imagenet": [  # the standard ResNet transform (CBD, cRT/LWS on iNat): RandomResizedCrop(224), flip
        {"op": "random_resized_crop", "size": 224},
        {"op": "random_hflip"},
        {"op": "normalize"},
    ],
    # Decoupling (ImageNet-LT, Places-LT) and OLTR: RandomResizedCrop(224), flip, ColorJitter(0.4, 0.4, 0.4, 0)
    "imagenet_jitter": [
        {"op": "random_resized_crop", "size": 224},
        {"op": "random_hflip"},
        {"op": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0, "p": 1.0},
        {"op": "normalize"},
    ],
    "imagenet_strong": [  # MoCo v2
        {"op": "random_resized_crop", "size": 224, "scale": (0.2, 1.0)},
        {"op": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
        {"op": "random_grayscale", "p": 0.2},
        {"op": "gaussian_blur", "kernel_size": 23, "sigma": (0.1, 2.0), "p": 0.5},
        {"op": "random_hflip"},
        {"op": "normalize"},
    ],
    "eval": [
        {"op": "normalize"},
    ],
    "imagenet_eval": [  # Resize(256), CenterCrop(224)
        {"op": "center_crop_resize", "size": 224},
        {"op": "normalize"},
    ],
}
PRESETS["moco_v2"] = copy.deepcopy(PRESETS["imagenet_strong"])


def parse_step(index: int, step: Any, mean=None, std=None) -> tuple[str, dict[str, Any]]:
    """``(op name, checked params)`` of one spec step; a ConfigError names the op and parameter."""
    if not isinstance(step, dict):
        raise ConfigError(f"augment step {index}: expected a mapping like {{'op': name, ...}}, got {step!r}")
    params = dict(step)
    name = params.pop("op", None)
    if name is None:
        raise ConfigError(f"augment step {index}: missing 'op'")
    op = OP_TABLE.get(name)
    if op is None:
        raise ConfigError(f"unknown augment op {name!r}; choose from {', '.join(sorted(OP_TABLE))}")
    if name == "normalize":
        params.setdefault("mean", mean) if mean is not None else None
        params.setdefault("std", std) if std is not None else None
    params = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in params.items()}
    try:
        checked = from_dict(op.params, params, op=f"augment op {name!r}")
    except ConfigError as e:
        hint = " (give it in the spec or pass the dataset's)" if name == "normalize" and "missing parameter" in str(e) else ""
        raise ConfigError(f"{e}{hint}") from None
    parsed = dataclasses.asdict(checked)
    if name == "normalize" and len(parsed["mean"]) != len(parsed["std"]):
        raise ConfigError("augment op 'normalize': mean and std must have the same length")
    return name, {k: v for k, v in parsed.items() if k in params}


class Augment:
    """A validated chain of augmentation ops.

    Build it from a recipe's list of ``{"op": name, ...}`` steps, or with :meth:`preset`.
    Calling it on a batch and a generator returns the augmented float batch. The batch is a uint8 or
    float tensor, or an :class:`~longtail.data.augment.ImageList` of images of different sizes, whose
    first op (the sizing one) then runs per image, before the rest run batched on the device.
    """

    def __init__(self, spec: Sequence[dict[str, Any]], mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if isinstance(spec, (str, bytes, dict)) or not isinstance(spec, Sequence):
            raise ConfigError("augment spec must be a list of steps like {'op': name, ...}")
        self.steps: list[tuple[str, dict[str, Any]]] = [parse_step(i, s, mean, std) for i, s in enumerate(spec)]

    @classmethod
    def preset(cls, name: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               size: int | None = None) -> Augment:
        """Build a named preset (see :data:`PRESETS`); ``size`` replaces the output size of every sizing op."""
        if name not in PRESETS:
            raise ConfigError(f"unknown augment preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
        spec = copy.deepcopy(PRESETS[name])
        if size is not None:
            for step in spec:
                if "size" in step:
                    step["size"] = size
        return cls(spec, mean, std)

    def size_images(self, images: perimage.ImageList, g: torch.Generator) -> torch.Tensor:
        """The uint8 batch on ``images.device`` after the first op, when it sizes; else the centre squares."""
        if self.steps and OP_TABLE[self.steps[0][0]].per_image is not None:
            name, params = self.steps[0]
            op = OP_TABLE[name]
            return op.per_image(images, g, **params) if op.random else op.per_image(images, **params)
        return perimage.square_images(images)

    def __call__(self, x: torch.Tensor | perimage.ImageList, g: torch.Generator, already_cut: bool = False) -> torch.Tensor:
        """Augment a batch; uint8 input is first scaled to float in [0, 1].

        ``already_cut``: ``x`` is already :meth:`size_images`'s output, so the first op is skipped.
        """
        steps = self.steps
        if isinstance(x, perimage.ImageList):
            x, already_cut = self.size_images(x, g), True
        if already_cut and steps and OP_TABLE[steps[0][0]].per_image is not None:
            steps = steps[1:]
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        elif not x.is_floating_point():
            raise TypeError(f"Augment expects a uint8 or float batch, got {x.dtype}")
        for name, params in steps:
            op = OP_TABLE[name]
            x = op.fn(x, g, **params) if op.random else op.fn(x, **params)
        return x

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        body = ", ".join(f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})" for name, params in self.steps)
        return f"Augment([{body}])"
