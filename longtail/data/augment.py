"""Batched, on-device image augmentation.

Every op works on a whole float batch ``x`` of shape ``(N, C, H, W)`` with
values in ``[0, 1]`` at once, on whatever device ``x`` lives on, and draws an
independent random decision per image. Nothing here touches the global RNG:
all randomness comes from the explicit ``torch.Generator`` ``g`` (on the same
device as ``x``), so the engine can make a step reproducible by seeding ``g``
from ``(seed, epoch, step)``.

Each random op is split in two: a sampler that draws the per-image parameters
(``crop_offsets``, ``flip_mask``, ``resized_crop_boxes``, ...) and a
deterministic function that applies given parameters (``crop_with_offsets``,
``hflip_where``, ...). The public op is just the composition. The split lets
tests replay the very same draws through a per-image reference loop, and lets
methods reuse the parameters (e.g. the same crop for two views).

The pipeline :class:`Augment` chains ops from a spec list (what a recipe
holds) and validates the spec up front, raising :class:`ConfigError` that
names the op and parameter at fault.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from longtail.errors import ConfigError

__all__ = [
    "OPS",
    "PRESETS",
    "Augment",
    "JitterParams",
    "blur_params",
    "center_crop",
    "center_crop_resize",
    "color_jitter",
    "color_jitter_with",
    "crop_offsets",
    "crop_with_offsets",
    "flip_mask",
    "gaussian_blur",
    "gaussian_blur_with",
    "gaussian_noise",
    "grayscale",
    "grayscale_mask",
    "grayscale_where",
    "hflip_where",
    "hsv_to_rgb",
    "jitter_params",
    "normalize",
    "random_crop",
    "random_grayscale",
    "random_hflip",
    "random_resized_crop",
    "random_rotate90",
    "resize",
    "resized_crop_boxes",
    "resized_crop_with_boxes",
    "rgb_to_hsv",
    "rotate90",
]

# ITU-R BT.601 luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _per_image(mask: torch.Tensor) -> torch.Tensor:
    """Shape an (N,) tensor so it broadcasts against an (N, C, H, W) batch."""
    return mask.view(-1, 1, 1, 1)


def _same_device(a: torch.device, b: torch.device) -> bool:
    # A device without an index means "the current one"; don't call that a mismatch.
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_batch(op: str, x: torch.Tensor, g: torch.Generator | None = None) -> None:
    if x.dim() != 4:
        raise ValueError(f"augment op {op!r}: expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if g is not None and not _same_device(g.device, x.device):
        raise ValueError(
            f"augment op {op!r}: generator is on {g.device} but the batch is on {x.device}; "
            "use a generator on the data's device"
        )


def _check_rgb(op: str, x: torch.Tensor) -> None:
    if x.shape[1] != 3:
        raise ConfigError(f"augment op {op!r} needs 3-channel RGB images, got {x.shape[1]} channel(s)")


# --------------------------------------------------------------------------
# Random crop with padding
# --------------------------------------------------------------------------


def crop_offsets(
    n: int, height: int, width: int, size: int, padding: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (top, left) offsets into the padded image, uniform over all valid ones."""
    span_h = height + 2 * padding - size + 1
    span_w = width + 2 * padding - size + 1
    if span_h < 1 or span_w < 1:
        raise ConfigError(
            f"augment op 'random_crop': size {size} exceeds the padded image "
            f"{height + 2 * padding}x{width + 2 * padding}"
        )
    top = torch.randint(0, span_h, (n,), generator=g, device=g.device)
    left = torch.randint(0, span_w, (n,), generator=g, device=g.device)
    return top, left


def crop_with_offsets(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    size: int,
    padding: int = 0,
    fill: float = 0.0,
) -> torch.Tensor:
    """Pad ``x`` by ``padding`` and cut a ``size`` square at per-image offsets.

    A single ``gather`` over the flattened padded images: the flat index of
    output pixel (i, j) of image n is ``(top[n] + i) * Wp + left[n] + j``. This
    avoids both a per-image loop and materialising every possible crop.
    Offsets must come from :func:`crop_offsets` (or be equally in range).
    """
    _check_batch("random_crop", x)
    n, c = x.shape[:2]
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding), mode="constant", value=fill)
    hp, wp = x.shape[-2:]
    ar = torch.arange(size, device=x.device)
    rows = (top.to(x.device).view(n, 1) + ar) * wp  # (N, size)
    cols = left.to(x.device).view(n, 1) + ar  # (N, size)
    index = (rows.view(n, size, 1) + cols.view(n, 1, size)).view(n, 1, size * size)
    flat = x.reshape(n, c, hp * wp)
    return flat.gather(2, index.expand(n, c, size * size)).view(n, c, size, size)


def random_crop(
    x: torch.Tensor, g: torch.Generator, size: int, padding: int = 0, fill: float = 0.0
) -> torch.Tensor:
    """Pad by ``padding`` with ``fill``, then crop ``size`` at a random offset per image."""
    _check_batch("random_crop", x, g)
    top, left = crop_offsets(x.shape[0], x.shape[-2], x.shape[-1], size, padding, g)
    return crop_with_offsets(x, top, left, size, padding, fill)


# --------------------------------------------------------------------------
# Horizontal flip
# --------------------------------------------------------------------------


def flip_mask(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    """(N,) bool: which images to flip."""
    return torch.rand(n, generator=g, device=g.device) < p


def hflip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images selected by ``mask`` left-right."""
    return torch.where(_per_image(mask), x.flip(-1), x)


def random_hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image horizontally with probability ``p``."""
    _check_batch("random_hflip", x, g)
    return hflip_where(x, flip_mask(x.shape[0], p, g))


# --------------------------------------------------------------------------
# Random resized crop
# --------------------------------------------------------------------------


def resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """(N, 4) int64 boxes ``(top, left, box_height, box_width)``, sampled like torchvision.

    torchvision tries up to 10 (area, aspect) draws in sequence and falls back
    to a central crop. Here all attempts are drawn at once per image and the
    first one that fits is kept, which gives the same distribution.
    """
    area = height * width
    u = torch.rand(n, attempts, 4, generator=g, device=g.device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    box_w = torch.sqrt(target_area * aspect).round().long()
    box_h = torch.sqrt(target_area / aspect).round().long()
    fits = (box_w > 0) & (box_h > 0) & (box_w <= width) & (box_h <= height)
    # argmax returns the first maximum, i.e. the first attempt that fits.
    first = fits.int().argmax(1, keepdim=True)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, first).squeeze(1)

    box_h, box_w = pick(box_h), pick(box_w)
    # floor(u * count) is uniform over {0, ..., count - 1}; the clamp guards
    # against u * count rounding up to count.
    top = (pick(u[..., 2]) * (height - box_h + 1)).floor().long()
    left = (pick(u[..., 3]) * (width - box_w + 1)).floor().long()
    top = torch.minimum(top, height - box_h)
    left = torch.minimum(left, width - box_w)

    # Central fallback: the largest box with an admissible aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = int(round(height * ratio[1])), height
    else:
        fb_w, fb_h = width, height
    fallback = torch.tensor(
        [(height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w], device=g.device
    )
    boxes = torch.stack([top, left, box_h, box_w], dim=1)
    return torch.where(fits.any(1, keepdim=True), boxes, fallback)


def resized_crop_with_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box and resize it to ``size`` x ``size`` (bilinear).

    Matches ``F.interpolate(crop, size, mode="bilinear", align_corners=False)``
    on the cropped region, done for the whole batch with one ``grid_sample``:
    the per-image affine maps output pixel centres into the box, and sampling
    positions are clamped to the box's outermost pixel centres so that pixels
    outside the box never bleed in (that clamp is what interpolate does at a
    crop's border). No antialiasing, unlike torchvision's tensor default.
    """
    _check_batch("random_resized_crop", x)
    n, _, height, width = x.shape
    b = boxes.to(device=x.device, dtype=torch.float32)
    top, left, box_h, box_w = b.unbind(1)
    centres = torch.arange(size, device=x.device, dtype=torch.float32) + 0.5

    def axis(start: torch.Tensor, extent: torch.Tensor, length: int) -> torch.Tensor:
        # Source pixel coordinate of each output pixel centre, as in interpolate
        # with align_corners=False, then mapped to grid_sample's [-1, 1].
        src = start.view(n, 1) + centres * (extent / size).view(n, 1) - 0.5
        src = torch.minimum(torch.maximum(src, start.view(n, 1)), (start + extent - 1).view(n, 1))
        return (2.0 * src + 1.0) / length - 1.0

    gx = axis(left, box_w, width)  # (N, size)
    gy = axis(top, box_h, height)  # (N, size)
    grid = torch.stack(
        [gx.view(n, 1, size).expand(n, size, size), gy.view(n, size, 1).expand(n, size, size)], dim=-1
    )
    return F.grid_sample(
        x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )


def random_resized_crop(
    x: torch.Tensor,
    g: torch.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop a random box (area fraction ``scale``, aspect ``ratio``) per image, resize to ``size``."""
    _check_batch("random_resized_crop", x, g)
    boxes = resized_crop_boxes(x.shape[0], x.shape[-2], x.shape[-1], scale, ratio, g)
    return resized_crop_with_boxes(x, boxes, size)


# --------------------------------------------------------------------------
# Deterministic resizing (evaluation)
# --------------------------------------------------------------------------


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio.

    Antialiased bilinear, like torchvision's ``Resize`` on tensors.
    """
    _check_batch("resize", x)
    height, width = x.shape[-2:]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    if (new_h, new_w) == (height, width):
        return x.clone()
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Cut the central ``size`` x ``size`` square."""
    _check_batch("center_crop", x)
    height, width = x.shape[-2:]
    if size > height or size > width:
        raise ConfigError(f"augment op 'center_crop': size {size} exceeds the image {height}x{width}")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return x[..., top : top + size, left : left + size].clone()


def center_crop_resize(x: torch.Tensor, size: int, crop_fraction: float = 0.875) -> torch.Tensor:
    """Resize the shorter side to ``round(size / crop_fraction)``, then center-crop ``size``.

    With the defaults this is the usual ImageNet evaluation transform
    (resize 256, center crop 224).
    """
    return center_crop(resize(x, int(round(size / crop_fraction))), size)


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
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
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
# Rotation by multiples of 90 degrees
# --------------------------------------------------------------------------


def rotate90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image n by ``k[n] * 90`` degrees counter-clockwise (images must be square).

    Same convention as ``torch.rot90(img, k, dims=(1, 2))`` on a (C, H, W) image.
    """
    _check_batch("rotate90", x)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate90 needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    k = k.to(x.device).remainder(4)
    out = x
    for quarter in (1, 2, 3):
        out = torch.where(_per_image(k == quarter), torch.rot90(x, quarter, dims=(2, 3)), out)
    return out


def random_rotate90(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by a uniform random multiple of 90 degrees; returns (rotated, k)."""
    _check_batch("rotate90", x, g)
    k = torch.randint(0, 4, (x.shape[0],), generator=g, device=x.device)
    return rotate90(x, k), k


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``."""
    _check_batch("normalize", x)
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1] or s.shape[1] != x.shape[1]:
        raise ConfigError(
            f"augment op 'normalize': mean/std have {m.shape[1]}/{s.shape[1]} values "
            f"but the images have {x.shape[1]} channel(s)"
        )
    return (x - m) / s


# --------------------------------------------------------------------------
# Spec validation
# --------------------------------------------------------------------------

# A checker returns the (possibly normalised) value or raises ValueError with
# what was expected; the pipeline turns that into a ConfigError.
Checker = Callable[[Any], Any]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any) -> float:
    if not _is_number(v) or not math.isfinite(v):
        raise ValueError("must be a number")
    return float(v)


def _positive_int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError("must be a positive integer")
    return v


def _nonneg_int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError("must be a non-negative integer")
    return v


def _odd_positive_int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v % 2 == 0:
        raise ValueError("must be an odd positive integer")
    return v


def _probability(v: Any) -> float:
    if not _is_number(v) or not 0.0 <= v <= 1.0:
        raise ValueError("must be a probability in [0, 1]")
    return float(v)


def _fraction(v: Any) -> float:
    if not _is_number(v) or not 0.0 < v <= 1.0:
        raise ValueError("must be a fraction in (0, 1]")
    return float(v)


def _nonneg_number(v: Any) -> float:
    if not _is_number(v) or not 0.0 <= v < math.inf:
        raise ValueError("must be a non-negative number")
    return float(v)


def _pair(v: Any, lo: float, hi: float, what: str) -> tuple[float, float]:
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 2
        or not all(_is_number(e) for e in v)
        or not lo <= v[0] <= v[1] <= hi
    ):
        raise ValueError(f"must be a pair [low, high] with {what}")
    return float(v[0]), float(v[1])


def _scale_range(v: Any) -> tuple[float, float]:
    out = _pair(v, 0.0, 1.0, "0 <= low <= high <= 1")
    if out[1] == 0:
        raise ValueError("must have a positive upper bound")
    return out


def _ratio_range(v: Any) -> tuple[float, float]:
    out = _pair(v, 0.0, math.inf, "0 < low <= high")
    if out[0] <= 0:
        raise ValueError("must be a pair [low, high] with 0 < low <= high")
    return out


def _jitter_strength(v: Any) -> float | tuple[float, float]:
    if _is_number(v):
        return _nonneg_number(v)
    return _pair(v, 0.0, math.inf, "0 <= low <= high")


def _hue_strength(v: Any) -> float | tuple[float, float]:
    if _is_number(v):
        if not 0.0 <= v <= 0.5:
            raise ValueError("must be in [0, 0.5] or a pair within [-0.5, 0.5]")
        return float(v)
    return _pair(v, -0.5, 0.5, "-0.5 <= low <= high <= 0.5")


def _sigma_range(v: Any) -> tuple[float, float]:
    if _is_number(v):
        v = (v, v)
    out = _pair(v, 0.0, math.inf, "0 < low <= high")
    if out[0] <= 0:
        raise ValueError("must be positive (a number or a pair [low, high])")
    return out


def _channel_values(positive: bool) -> Checker:
    def check(v: Any) -> tuple[float, ...]:
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if not isinstance(v, (list, tuple)) or not v or not all(_is_number(e) for e in v):
            raise ValueError("must be a non-empty list of numbers, one per channel")
        if positive and not all(e > 0 for e in v):
            raise ValueError("must be positive")
        return tuple(float(e) for e in v)

    return check


class _OpInfo(NamedTuple):
    fn: Callable[..., torch.Tensor]
    random: bool  # takes the generator as second argument
    checks: dict[str, Checker]
    required: frozenset[str]


_OP_INFO: dict[str, _OpInfo] = {}

#: Ops usable in an :class:`Augment` spec, by name. ``rotate90`` and
#: ``random_rotate90`` are left out: they need or return rotation labels.
OPS: dict[str, Callable[..., torch.Tensor]] = {}


def _register(name: str, fn: Callable[..., torch.Tensor], **checks: Checker) -> None:
    params = list(inspect.signature(fn).parameters.values())
    random = len(params) > 1 and params[1].name == "g"
    own = params[2:] if random else params[1:]
    assert {p.name for p in own} == set(checks), f"checks for {name} must cover its parameters"
    required = frozenset(p.name for p in own if p.default is inspect.Parameter.empty)
    _OP_INFO[name] = _OpInfo(fn, random, checks, required)
    OPS[name] = fn


_register("random_crop", random_crop, size=_positive_int, padding=_nonneg_int, fill=_number)
_register("random_hflip", random_hflip, p=_probability)
_register(
    "random_resized_crop", random_resized_crop, size=_positive_int, scale=_scale_range, ratio=_ratio_range
)
_register("resize", resize, size=_positive_int)
_register("center_crop", center_crop, size=_positive_int)
_register(
    "center_crop_resize",
    center_crop_resize,
    size=_positive_int,
    crop_fraction=_fraction,
)
_register(
    "color_jitter",
    color_jitter,
    brightness=_jitter_strength,
    contrast=_jitter_strength,
    saturation=_jitter_strength,
    hue=_hue_strength,
    p=_probability,
)
_register("random_grayscale", random_grayscale, p=_probability)
_register("gaussian_noise", gaussian_noise, sigma=_nonneg_number)
_register(
    "gaussian_blur", gaussian_blur, kernel_size=_odd_positive_int, sigma=_sigma_range, p=_probability
)
_register("normalize", normalize, mean=_channel_values(False), std=_channel_values(True))


# --------------------------------------------------------------------------
# Pipeline and presets
# --------------------------------------------------------------------------

#: Named specs. ``normalize`` steps take mean/std from the caller; sizes are
#: the defaults that :meth:`Augment.preset` can override.
PRESETS: dict[str, list[dict[str, Any]]] = {
    "cifar": [
        {"op": "random_crop", "size": 32, "padding": 4},
        {"op": "random_hflip"},
        {"op": "normalize"},
    ],
    # CBD's data-augmentation teacher: SimCLR-style colour distortion at
    # strength s = 1 (0.8s for brightness/contrast/saturation, 0.2s for hue),
    # plus a little pixel noise after normalisation.
    "cifar_strong": [
        {"op": "random_crop", "size": 32, "padding": 4},
        {"op": "random_hflip"},
        {"op": "color_jitter", "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8},
        {"op": "random_grayscale", "p": 0.2},
        {"op": "normalize"},
        {"op": "gaussian_noise", "sigma": 0.01},
    ],
    "imagenet": [
        {"op": "random_resized_crop", "size": 224},
        {"op": "random_hflip"},
        {"op": "normalize"},
    ],
    "imagenet_strong": [
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
    "imagenet_eval": [
        {"op": "center_crop_resize", "size": 224},
        {"op": "normalize"},
    ],
}
PRESETS["moco_v2"] = copy.deepcopy(PRESETS["imagenet_strong"])


class Augment:
    """A validated chain of augmentation ops.

    Build it with :meth:`from_spec` (a recipe's list of ``{"op": name, ...}``
    steps) or :meth:`preset`. Calling it on a uint8 or float batch and a
    generator returns the augmented float batch.
    """

    def __init__(
        self,
        spec: Sequence[dict[str, Any]],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(spec, (str, bytes, dict)) or not isinstance(spec, Sequence):
            raise ConfigError("augment spec must be a list of steps like {'op': name, ...}")
        self.steps: list[tuple[str, dict[str, Any]]] = [
            self._validate_step(i, step, mean, std) for i, step in enumerate(spec)
        ]

    @classmethod
    def from_spec(
        cls,
        spec: Sequence[dict[str, Any]],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Augment:
        """Build from spec steps; ``mean``/``std`` fill ``normalize`` steps that omit them."""
        return cls(spec, mean, std)

    @classmethod
    def preset(
        cls,
        name: str,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        size: int | None = None,
    ) -> Augment:
        """Build a named preset (see :data:`PRESETS`).

        ``mean``/``std`` come from the dataset. ``size`` replaces the output
        size of every sizing op (e.g. 64 for a 64x64 dataset); crop padding
        and other parameters stay as in the preset.
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown augment preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
        spec = copy.deepcopy(PRESETS[name])
        if size is not None:
            for step in spec:
                if "size" in step:
                    step["size"] = size
        return cls(spec, mean, std)

    @staticmethod
    def _validate_step(
        index: int, step: Any, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[str, dict[str, Any]]:
        if not isinstance(step, dict):
            raise ConfigError(
                f"augment step {index}: expected a mapping like {{'op': name, ...}}, got {step!r}"
            )
        params = dict(step)
        name = params.pop("op", None)
        if name is None:
            raise ConfigError(f"augment step {index}: missing 'op'")
        info = _OP_INFO.get(name)
        if info is None:
            raise ConfigError(f"unknown augment op {name!r}; choose from {', '.join(sorted(OPS))}")
        if name == "normalize":
            if "mean" not in params and mean is not None:
                params["mean"] = mean
            if "std" not in params and std is not None:
                params["std"] = std
        for key in params:
            if key not in info.checks:
                expected = ", ".join(info.checks) or "none"
                raise ConfigError(
                    f"augment op {name!r}: unknown parameter {key!r}; expected one of: {expected}"
                )
        for key in sorted(info.required - params.keys()):
            hint = " (give it in the spec or pass the dataset's)" if name == "normalize" else ""
            raise ConfigError(f"augment op {name!r}: missing parameter {key!r}{hint}")
        for key, value in params.items():
            try:
                params[key] = info.checks[key](value)
            except ValueError as e:
                raise ConfigError(f"augment op {name!r}: parameter {key!r} {e}, got {value!r}") from None
        if name == "normalize" and len(params["mean"]) != len(params["std"]):
            raise ConfigError("augment op 'normalize': mean and std must have the same length")
        return name, params

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Augment a batch; uint8 input is first scaled to float in [0, 1]."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        elif not x.is_floating_point():
            raise TypeError(f"Augment expects a uint8 or float batch, got {x.dtype}")
        for name, params in self.steps:
            info = _OP_INFO[name]
            x = info.fn(x, g, **params) if info.random else info.fn(x, **params)
        return x

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        body = ", ".join(
            f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})" for name, params in self.steps
        )
        return f"Augment([{body}])"
