"""The deterministic image ops of AutoAugment and RandAugment, batched, with per-image arguments.

Each op takes a float batch ``x`` (N, 3, H, W) in [0, 1] and an (N,) tensor with each image's
argument (a factor, a bit count, a threshold, an angle, ...); the random policies in
:mod:`.policy` draw those arguments and call these. The reference is PIL, on which the published
policies run: ops that PIL defines on 8-bit values (invert, posterize, solarize, autocontrast,
equalize) first round to the 256 levels, so that they agree with PIL level for level; the blends
(colour, contrast, brightness, sharpness) and the resampling ops stay in float, where PIL rounds
to uint8 after each op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import _check_batch, _check_rgb, _per_image
from .color import grayscale

# --------------------------------------------------------------------------
# 8-bit ops (PIL.ImageOps), exact on the 256 levels
# --------------------------------------------------------------------------


def levels(x: torch.Tensor) -> torch.Tensor:
    """The batch as float levels 0..255, rounded as PIL's uint8 would hold them."""
    return x.clamp(0.0, 1.0).mul(255.0).round_()


def _from_levels(q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return q.to(like.dtype).div_(255.0)


def invert(x: torch.Tensor, arg: torch.Tensor | None = None) -> torch.Tensor:
    """255 - v (``arg`` is ignored; it is there so every op has one signature)."""
    return _from_levels(255.0 - levels(x), x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits[n]`` bits of each level (PIL masks with ~(2**(8-bits) - 1)).

    Clearing the low bits of a non-negative integer is flooring it to a multiple of 2**(8-bits).
    """
    step = torch.pow(2.0, 8.0 - bits.to(x.device, torch.float32).clamp(0, 8))
    step = _per_image(step)
    return _from_levels(torch.floor(levels(x) / step) * step, x)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the levels at or above ``threshold[n]`` (PIL: ``v if v < threshold else 255 - v``)."""
    q = levels(x)
    return _from_levels(torch.where(q < _per_image(threshold.to(q)), q, 255.0 - q), x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128.0) -> torch.Tensor:
    """Add ``add[n]`` to the levels below ``threshold``, capped at 255 (timm's SolarizeAdd)."""
    q = levels(x)
    return _from_levels(torch.where(q < threshold, (q + _per_image(add.to(q))).clamp_(max=255.0), q), x)


def _channels(q: torch.Tensor) -> torch.Tensor:
    """Levels as int64 rows, one per (image, channel): the unit PIL's histograms work on."""
    return q.long().flatten(2).flatten(0, 1)


def autocontrast(x: torch.Tensor, arg: torch.Tensor | None = None) -> torch.Tensor:
    """Stretch each channel of each image so its lowest level becomes 0 and its highest 255.

    PIL builds a lut ``int(v * scale + offset)`` with ``scale = 255 / (hi - lo)`` and ``offset = -lo * scale``
    in double precision; building it the same way (not ``(v - lo) * scale``) keeps the truncation
    at exact multiples identical, e.g. ``hi`` maps to 254 where the double lands just below 255.
    A flat channel (hi <= lo) is left as it is.
    """
    q = levels(x)
    rows = _channels(q)
    lo = rows.amin(1, keepdim=True).double()
    hi = rows.amax(1, keepdim=True).double()
    # A true division: ``255.0 / t`` in torch is 255 * (1 / t), which rounds differently.
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1.0)
    v = torch.arange(256, device=rows.device, dtype=torch.float64).expand(rows.shape[0], 256)
    lut = torch.where(hi > lo, torch.floor(v * scale + (-lo * scale)).clamp_(0.0, 255.0), v)
    return _from_levels(lut.gather(1, rows).view_as(q), x)


def equalize(x: torch.Tensor, arg: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's ImageOps.equalize on each channel of each image, all at once.

    One ``bincount`` over level + 256 * (row index) gives every row's histogram. PIL's lut is
    ``(step // 2 + count of lower levels) // step`` with ``step = (pixels - count at the highest level
    present) // 255``, and the identity where step is 0 (e.g. a channel of one or two levels).
    """
    q = levels(x)
    rows = _channels(q)
    count, pixels = rows.shape
    offset = torch.arange(count, device=rows.device).view(-1, 1) * 256
    hist = torch.bincount((rows + offset).view(-1), minlength=count * 256).view(count, 256)
    top = hist.gather(1, rows.amax(1, keepdim=True))
    step = (pixels - top) // 255
    below = hist.cumsum(1) - hist
    lut = (step // 2 + below) // step.clamp(min=1)
    identity = torch.arange(256, device=rows.device).expand(count, 256)
    lut = torch.where(step > 0, lut, identity).clamp_(max=255)
    return _from_levels(lut.gather(1, rows).view_as(q), x)


# --------------------------------------------------------------------------
# Blends (PIL.ImageEnhance): degenerate + factor * (image - degenerate), clipped
# --------------------------------------------------------------------------


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor.to(x))
    return (degenerate + f * (x - degenerate)).clamp_(0.0, 1.0)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``factor * x``."""
    return _blend(torch.zeros_like(x), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's luma (PIL's L = (299 R + 587 G + 114 B) / 1000); 0 is greyscale."""
    _check_rgb("color", x)
    return _blend(grayscale(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a flat image at the mean luma, which PIL rounds to a whole level: int(mean + 0.5)."""
    _check_rgb("contrast", x)
    mean = levels(grayscale(x)).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(torch.floor(mean + 0.5) / 255.0, x, factor)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH, [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, on the interior; PIL keeps the border.

    Written as (9 * the 3x3 mean + 4 * the centre) / 13: a pooling, which on a CPU is several times
    faster than the grouped convolution.
    """
    out = x.clone()
    if x.shape[-2] > 2 and x.shape[-1] > 2:
        box = F.avg_pool2d(x, 3, stride=1)
        out[..., 1:-1, 1:-1] = (box * 9.0 + x[..., 1:-1, 1:-1] * 4.0) / 13.0
    return out


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the smoothed image: factor > 1 sharpens, < 1 blurs."""
    return _blend(smooth(x), x, factor)


# --------------------------------------------------------------------------
# Resampling (PIL's Image.transform(AFFINE) and Image.rotate)
# --------------------------------------------------------------------------


def affine(x: torch.Tensor, matrix: torch.Tensor, mode: str = "nearest", fill: float = 128 / 255) -> torch.Tensor:
    """Resample each image with its (N, 2, 3) matrix, in PIL's convention, filling outside with ``fill``.

    PIL's matrix maps an output pixel centre (x + 0.5, y + 0.5) to the input point it samples,
    in pixel units with the origin at the top-left corner. It is rewritten here in grid_sample's
    [-1, 1] units (align_corners=False has the same pixel-centre convention). PIL fills a pixel
    whose sample point falls outside the image and otherwise clamps the filter taps at the
    border; padding_mode='border' plus an inside test on the grid reproduces both.
    """
    _check_batch("affine", x)
    n, _, height, width = x.shape
    m = matrix.to(device=x.device, dtype=torch.float32)
    a, b, c, d, e, f = m.view(n, 6).unbind(1)
    rw, rh = height / width, width / height
    theta = torch.stack([
        torch.stack([a, b * rw, a + b * rw + 2 * c / width - 1], 1),
        torch.stack([d * rh, e, d * rh + e + 2 * f / height - 1], 1),
    ], 1)
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    out = F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(-1).unsqueeze(1)
    out = torch.where(inside, out, torch.full_like(out[:, :1], fill))
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out  # cubic weights overshoot


def _matrix(n: int, device: torch.device, **entries: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) identity matrices with the named entries (a..f, PIL's order) replaced."""
    rows = {k: torch.full((n,), float(k in "ae"), device=device) for k in "abcdef"}
    rows.update({k: v.to(device, torch.float32) for k, v in entries.items()})
    return torch.stack([rows[k] for k in "abcdef"], 1).view(n, 2, 3)


def shear_x(x: torch.Tensor, amount: torch.Tensor, mode: str = "bicubic", fill: float = 128 / 255) -> torch.Tensor:
    """PIL's (1, s, 0, 0, 1, 0): input x = x + s * y, sheared about the top edge, not the centre."""
    return affine(x, _matrix(x.shape[0], x.device, b=amount), mode, fill)


def shear_y(x: torch.Tensor, amount: torch.Tensor, mode: str = "bicubic", fill: float = 128 / 255) -> torch.Tensor:
    """PIL's (1, 0, 0, s, 1, 0): input y = s * x + y."""
    return affine(x, _matrix(x.shape[0], x.device, d=amount), mode, fill)


def translate_x(x: torch.Tensor, pixels: torch.Tensor, mode: str = "nearest", fill: float = 128 / 255) -> torch.Tensor:
    """PIL's (1, 0, t, 0, 1, 0): output x samples input x + t, so a positive t moves the image left."""
    return affine(x, _matrix(x.shape[0], x.device, c=pixels), mode, fill)


def translate_y(x: torch.Tensor, pixels: torch.Tensor, mode: str = "nearest", fill: float = 128 / 255) -> torch.Tensor:
    """PIL's (1, 0, 0, 0, 1, t): a positive t moves the image up."""
    return affine(x, _matrix(x.shape[0], x.device, f=pixels), mode, fill)


def rotate(x: torch.Tensor, degrees: torch.Tensor, mode: str = "nearest", fill: float = 128 / 255) -> torch.Tensor:
    """Rotate about the image centre, counter-clockwise for positive degrees, like ``Image.rotate``.

    PIL's inverse map: input = R(-angle) (p - centre) + centre, with the centre at (W / 2, H / 2).
    """
    height, width = x.shape[-2:]
    t = torch.deg2rad(degrees.to(x.device, torch.float64))
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = width / 2.0, height / 2.0
    m = _matrix(x.shape[0], x.device, a=cos, b=-sin, c=cx - cos * cx + sin * cy,
                d=sin, e=cos, f=cy - sin * cx - cos * cy)
    return affine(x, m, mode, fill)


# --------------------------------------------------------------------------
# Cutout
# --------------------------------------------------------------------------


def cutout_with(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero the (N, holes) boxes rows [cy - size//2, cy + size//2) x the same in columns, clipped.

    That is the reference Cutout's box (np.clip of centre -/+ length // 2), so an even size is the
    whole box and an odd one loses a row and a column, as there.
    """
    _check_batch("cutout", x)
    height, width = x.shape[-2:]
    half = size // 2

    def span(centre: torch.Tensor, length: int) -> torch.Tensor:
        at = torch.arange(length, device=x.device).view(1, 1, length)
        c = centre.to(x.device).unsqueeze(-1)
        return (at >= c - half) & (at < c + half)  # (N, holes, length); the clip is implicit

    hole = span(cy, height).unsqueeze(-1) & span(cx, width).unsqueeze(-2)  # (N, holes, H, W)
    return x.masked_fill(hole.any(1, keepdim=True), 0.0)


__all__ = [
    "affine", "autocontrast", "brightness", "color", "contrast", "cutout_with", "equalize", "invert", "levels",
    "posterize", "rotate", "sharpness", "shear_x", "shear_y", "smooth", "solarize", "solarize_add", "translate_x",
    "translate_y",
]
