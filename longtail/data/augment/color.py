"""Photometric ops on uniform batches: colour jitter, grayscale, blur, noise, normalisation."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from longtail.errors import ConfigError

from .checks import LUMA_WEIGHTS, _check_batch, _check_rgb, _per_image, constant

# --------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of an RGB batch."""
    r, g, b = x.unbind(1)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB batch in [0, 1] to HSV, all three channels in [0, 1] (colorsys conventions)."""
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    minc = x.amin(1)
    delta = maxc - minc
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0.0)
    # Grey pixels (delta == 0) get hue 0; dividing by 1 there keeps it finite.
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r, (g - b) / d, torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d)
    )
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack([hue, sat, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`.

    Uses the branch-free form c = v - v*s*clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6h) mod 6 and n = 5, 3, 1 for R, G, B, which vectorises without
    selecting among the six hue sectors.
    """
    hue, sat, val = x.unbind(1)
    n = constant((5.0, 3.0, 1.0), x.device, x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return val.unsqueeze(1) - (val * sat).unsqueeze(1) * ramp


class JitterParams(NamedTuple):
    """Per-image colour-jitter draws, all (N,). A factor is None when its stage is off."""

    brightness: torch.Tensor | None
    contrast: torch.Tensor | None
    saturation: torch.Tensor | None
    hue: torch.Tensor | None
    apply: torch.Tensor


def _factor_range(
    value: float | Sequence[float], centre: float, lo: float, hi: float
) -> tuple[float, float] | None:
    """torchvision's reading of a jitter strength: v -> [centre - v, centre + v], clipped; pairs as given."""
    if isinstance(value, (int, float)):
        if value == 0:
            return None
        return max(lo, centre - value), min(hi, centre + value)
    a, b = float(value[0]), float(value[1])
    return None if a == b == centre else (a, b)


def jitter_params(
    n: int,
    brightness: float | Sequence[float],
    contrast: float | Sequence[float],
    saturation: float | Sequence[float],
    hue: float | Sequence[float],
    p: float,
    g: torch.Generator,
) -> JitterParams:
    """Draw per-image jitter factors and the per-image apply decision.

    Always draws the same (N, 5) block so the generator advances identically
    whichever stages are enabled.
    """
    u = torch.rand(n, 5, generator=g, device=g.device)
    ranges = (
        _factor_range(brightness, 1.0, 0.0, math.inf),
        _factor_range(contrast, 1.0, 0.0, math.inf),
        _factor_range(saturation, 1.0, 0.0, math.inf),
        _factor_range(hue, 0.0, -0.5, 0.5),
    )
    factors = [None if r is None else r[0] + (r[1] - r[0]) * u[:, i] for i, r in enumerate(ranges)]
    return JitterParams(*factors, apply=u[:, 4] < p)


def color_jitter_with(x: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """Apply given jitter factors, in the fixed order brightness, contrast, saturation, hue.

    Each blend is clamped to [0, 1] as in torchvision. Images whose ``apply``
    flag is False are returned unchanged.
    """
    _check_batch("color_jitter", x)
    _check_rgb("color_jitter", x)
    # Each stage allocates its result and then works on it in place: `out`
    # never aliases `x`, and large batches are memory-bound.
    out = x
    if params.brightness is not None:
        out = (out * _per_image(params.brightness)).clamp_(0.0, 1.0)
    if params.contrast is not None:
        f = _per_image(params.contrast)
        mean = grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
        out = (f * out).add_((1.0 - f) * mean).clamp_(0.0, 1.0)
    if params.saturation is not None:
        f = _per_image(params.saturation)
        out = (f * out).add_((1.0 - f) * grayscale(out)).clamp_(0.0, 1.0)
    if params.hue is not None:
        hsv = rgb_to_hsv(out)
        shifted = torch.remainder(hsv[:, :1] + _per_image(params.hue), 1.0)
        out = hsv_to_rgb(torch.cat([shifted, hsv[:, 1:]], dim=1)).clamp_(0.0, 1.0)
    return torch.where(_per_image(params.apply), out, x)


def color_jitter(
    x: torch.Tensor,
    g: torch.Generator,
    brightness: float | Sequence[float] = 0.4,
    contrast: float | Sequence[float] = 0.4,
    saturation: float | Sequence[float] = 0.4,
    hue: float | Sequence[float] = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """Random brightness/contrast/saturation/hue per image, applied with probability ``p``.

    A strength ``v`` means a factor uniform in ``[max(0, 1 - v), 1 + v]``
    (hue: a shift uniform in ``[-v, v]``); a ``(lo, hi)`` pair is used as is.
    torchvision's ColorJitter shuffles the four stages on every call; here the
    order is fixed (brightness, contrast, saturation, hue) so that a batch is
    one vectorised pass.
    """
    _check_batch("color_jitter", x, g)
    _check_rgb("color_jitter", x)
    return color_jitter_with(x, jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, g))


def grayscale_mask(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    """(N,) bool: which images to turn grey."""
    return torch.rand(n, generator=g, device=g.device) < p


def grayscale_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the images selected by ``mask`` with their luma, replicated to 3 channels."""
    _check_rgb("random_grayscale", x)
    return torch.where(_per_image(mask), grayscale(x).expand_as(x), x)


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Convert each image to grayscale (kept 3-channel) with probability ``p``."""
    _check_batch("random_grayscale", x, g)
    return grayscale_where(x, grayscale_mask(x.shape[0], p, g))


# --------------------------------------------------------------------------
# Noise and blur
# --------------------------------------------------------------------------


def gaussian_noise(x: torch.Tensor, g: torch.Generator, sigma: float = 0.01) -> torch.Tensor:
    """Add i.i.d. N(0, sigma^2) noise to every pixel (not clamped)."""
    _check_batch("gaussian_noise", x, g)
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return x + sigma * noise


def blur_params(
    n: int, sigma: tuple[float, float], p: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image blur sigma, uniform in ``sigma``, and the (N,) bool apply decision."""
    u = torch.rand(n, 2, generator=g, device=g.device)
    return sigma[0] + (sigma[1] - sigma[0]) * u[:, 0], u[:, 1] < p


def gaussian_blur_with(
    x: torch.Tensor, sigmas: torch.Tensor, apply: torch.Tensor, kernel_size: int
) -> torch.Tensor:
    """Blur each selected image with its own Gaussian (reflect padding).

    Per-image kernels become a grouped convolution: the batch is viewed as one
    image with N*C channels and every channel gets its own 1-D kernel, applied
    horizontally then vertically.
    """
    _check_batch("gaussian_blur", x)
    n, c, height, width = x.shape
    half = kernel_size // 2
    if half >= height or half >= width:
        raise ConfigError(
            f"augment op 'gaussian_blur': kernel_size {kernel_size} is too large for {height}x{width} images"
        )
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigmas.to(x.dtype).view(n, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    flat = F.pad(x.reshape(1, n * c, height, width), (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return torch.where(_per_image(apply), flat.view(n, c, height, width), x)


def gaussian_blur(
    x: torch.Tensor,
    g: torch.Generator,
    kernel_size: int,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
) -> torch.Tensor:
    """Gaussian-blur each image with probability ``p``, sigma uniform in ``sigma``."""
    _check_batch("gaussian_blur", x, g)
    sigmas, apply = blur_params(x.shape[0], sigma, p, g)
    return gaussian_blur_with(x, sigmas, apply, kernel_size)


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``."""
    _check_batch("normalize", x)
    m = constant(tuple(map(float, mean)), x.device, x.dtype).view(1, -1, 1, 1)
    s = constant(tuple(map(float, std)), x.device, x.dtype).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1] or s.shape[1] != x.shape[1]:
        raise ConfigError(
            f"augment op 'normalize': mean/std have {m.shape[1]}/{s.shape[1]} values "
            f"but the images have {x.shape[1]} channel(s)"
        )
    return (x - m) / s
