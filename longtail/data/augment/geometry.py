"""Geometric ops on uniform batches: crops, flips, resized crops, resizes, quarter-turn rotations."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from longtail.errors import ConfigError

from .checks import _check_batch, _per_image

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
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """(N, 4) int64 boxes ``(top, left, box_height, box_width)``, sampled like torchvision.

    ``height`` and ``width`` are one size for the batch, or (N,) sizes for images of
    different shapes (file datasets, whose images keep their aspect ratio).
    torchvision tries up to 10 (area, aspect) draws in sequence and falls back
    to a central crop. Here all attempts are drawn at once per image and the
    first one that fits is kept, which gives the same distribution.
    """
    dev = g.device
    def per_image(side):  # a number is filled on the device (a kernel), not copied there from the host
        if isinstance(side, torch.Tensor):
            return side.to(dev, torch.float64).expand(n).reshape(n, 1)
        return torch.full((n, 1), float(side), dtype=torch.float64, device=dev)

    h, w = per_image(height), per_image(width)
    u = torch.rand(n, attempts, 4, generator=g, device=dev, dtype=torch.float64)
    target_area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    box_w = torch.sqrt(target_area * aspect).round()
    box_h = torch.sqrt(target_area / aspect).round()
    fits = (box_w > 0) & (box_h > 0) & (box_w <= w) & (box_h <= h)
    # argmax returns the first maximum, i.e. the first attempt that fits.
    first = fits.int().argmax(1, keepdim=True)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, first)

    box_h, box_w = pick(box_h), pick(box_w)
    # floor(u * count) is uniform over {0, ..., count - 1}; the clamp guards
    # against u * count rounding up to count.
    top = torch.minimum((pick(u[..., 2]) * (h - box_h + 1)).floor(), h - box_h)
    left = torch.minimum((pick(u[..., 3]) * (w - box_w + 1)).floor(), w - box_w)

    # Central fallback: the largest box with an admissible aspect ratio.
    in_ratio = w / h
    fb_w = torch.where(in_ratio > ratio[1], (h * ratio[1]).round(), w)
    fb_h = torch.where(in_ratio < ratio[0], (w / ratio[0]).round(), h)
    fallback = torch.cat([((h - fb_h) / 2).floor(), ((w - fb_w) / 2).floor(), fb_h, fb_w], dim=1)
    boxes = torch.cat([top, left, box_h, box_w], dim=1)
    return torch.where(fits.any(1, keepdim=True), boxes, fallback).long()


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
