"""AutoAugment's CIFAR-10 policy, RandAugment and Cutout as random ops on a float batch on the device.

The published policies run per image in PIL on a data-loader worker; here a whole batch is one
pass on the device. Every image still draws its own sub-policy (or ops), its own firing decisions
and its own signs, all from the generator ``g``, so a step is reproduced by reseeding ``g``.
Images are not looped over: each op slot loops over the op kinds and applies a kind to the images
that drew it, by index. The op kinds themselves are in :mod:`.policy_ops`; the tables, magnitude
maps and order follow ``shared/STRONG.md`` sections 2 and 3 (checked against the official code).

As elsewhere in the package, each random op is a sampler (``*_params``) plus a deterministic
``*_with`` that applies given draws, so tests can replay draws and methods can reuse them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from . import policy_ops as O
from .checks import _check_batch, _check_rgb, constant

OpFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, (n,) arguments) -> images

FILL = 128 / 255  # the grey the reference policies fill uncovered pixels with


def op_fns(fill: float = FILL, shear: str = "bicubic", move: str = "nearest") -> dict[str, OpFn]:
    """Every op kind as ``fn(x, arg)``; ``shear`` and ``move`` (translate, rotate) are grid_sample modes.

    A translation's argument is a fraction of the side, as both policies state it.
    """
    return {
        "invert": O.invert, "autocontrast": O.autocontrast, "equalize": O.equalize,
        "posterize": O.posterize, "solarize": O.solarize, "solarize_add": O.solarize_add,
        "color": O.color, "contrast": O.contrast, "brightness": O.brightness, "sharpness": O.sharpness,
        "shear_x": lambda x, a: O.shear_x(x, a, shear, fill),
        "shear_y": lambda x, a: O.shear_y(x, a, shear, fill),
        "translate_x": lambda x, a: O.translate_x(x, a * x.shape[-1], move, fill),
        "translate_y": lambda x, a: O.translate_y(x, a * x.shape[-2], move, fill),
        "rotate": lambda x, a: O.rotate(x, a, move, fill),
    }


def apply_slots(x: torch.Tensor, kind: torch.Tensor, arg: torch.Tensor, fire: torch.Tensor,
                fns: Sequence[OpFn], dense: bool | None = None) -> torch.Tensor:
    """Run op slot after slot; in slot s image n gets ``fns[kind[n, s]]`` with ``arg[n, s]`` if ``fire[n, s]``.

    One image takes one op per slot, so the kinds of a slot touch disjoint rows: each gathers its
    images, transforms them and writes them back in place (into one copy of the input), with no
    loop over images. A kind nobody drew costs nothing. That gather needs the count on the host, a
    sync per kind and slot on a GPU, so there (``dense``, the default off the CPU) every image goes
    through every kind and ``torch.where`` keeps the drawn one: more arithmetic, no sync.
    """
    x = x.clone()
    dense = x.device.type != "cpu" if dense is None else dense
    for slot in range(kind.shape[1]):
        for k, fn in enumerate(fns):
            chosen = fire[:, slot] & (kind[:, slot] == k)
            if dense:  # no host sync: every image through the op, kept only where it was drawn
                x = torch.where(chosen.view(-1, 1, 1, 1), fn(x, arg[:, slot]), x)
                continue
            idx = torch.nonzero(chosen).squeeze(1)
            if idx.numel():
                x.index_copy_(0, idx, fn(x.index_select(0, idx), arg[idx, slot]))
    return x


def _signs(u: torch.Tensor) -> torch.Tensor:
    return torch.where(u < 0.5, -1.0, 1.0)


# --------------------------------------------------------------------------
# AutoAugment, CIFAR-10 policy (STRONG.md section 2)
# --------------------------------------------------------------------------

#: The 25 sub-policies, each two (op, probability, magnitude index 0..9) in the order applied.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, 1)),
)
AA_OPS: tuple[str, ...] = tuple(sorted({op for sub in CIFAR10_POLICY for op, _, _ in sub}))  # the 14 kinds
_ENHANCE = ("color", "contrast", "sharpness", "brightness")
_POSTERIZE_BITS = (8, 8, 7, 7, 6, 6, 5, 5, 4, 4)


def aa_magnitude(op: str, index: int) -> tuple[float, float, bool]:
    """``(base, value, signed)``: the op's argument is ``base + value``, or ``base +/- value`` if signed.

    The index-to-value maps of the reference (10 evenly spaced values from 0 to the maximum):
    shear up to 0.3, translation up to 150/331 of the side, rotation up to 30 degrees (never
    negated), enhance factors 1 +/- up to 0.9, solarize thresholds 256 down to 0.
    """
    if op in ("shear_x", "shear_y"):
        return 0.0, index * 0.3 / 9, True
    if op in ("translate_x", "translate_y"):
        return 0.0, index * (150 / 331) / 9, True
    if op == "rotate":
        return 0.0, index * 30 / 9, False
    if op in _ENHANCE:
        return 1.0, index * 0.9 / 9, True
    if op == "posterize":
        return float(_POSTERIZE_BITS[index]), 0.0, False
    if op == "solarize":
        return 256.0 - index * 256 / 9, 0.0, False
    return 0.0, 0.0, False  # invert, autocontrast, equalize take no magnitude


def _aa_tables() -> dict[str, torch.Tensor]:
    """The policy as (25, 2) tensors: kind index, probability, base, value, signed."""
    cols: dict[str, list[list]] = {k: [] for k in ("kind", "prob", "base", "value", "signed")}
    for sub in CIFAR10_POLICY:
        rows = [(AA_OPS.index(op), p, *aa_magnitude(op, m)) for op, p, m in sub]
        for key, column in zip(cols, zip(*rows)):
            cols[key].append(list(column))
    dtypes = {"kind": torch.long, "signed": torch.bool}
    return {k: (tuple(map(tuple, v)), dtypes.get(k, torch.float64)) for k, v in cols.items()}


AA_TABLES = _aa_tables()  # {column: (values, dtype)}; constant() puts each on a device once


class AutoAugmentDraws(NamedTuple):
    """Per-image AutoAugment draws: the sub-policy (N,), and for its two ops (N, 2) uniforms."""

    subpolicy: torch.Tensor  # long in [0, 25)
    fire: torch.Tensor  # an op fires when this is below its probability
    sign: torch.Tensor  # below 0.5 negates a signed magnitude


def autoaugment_params(n: int, g: torch.Generator) -> AutoAugmentDraws:
    """One sub-policy per image, uniform over the 25, and uniforms for firing and signs."""
    subpolicy = torch.randint(0, len(CIFAR10_POLICY), (n,), generator=g, device=g.device)
    u = torch.rand(n, 4, generator=g, device=g.device, dtype=torch.float64)
    return AutoAugmentDraws(subpolicy, u[:, :2], u[:, 2:])


def autoaugment_with(x: torch.Tensor, draws: AutoAugmentDraws, fill: float = FILL,
                     shear: str = "bicubic") -> torch.Tensor:
    """Apply each image's sub-policy with the given draws.

    The reference shears bicubic and translates and rotates nearest (PIL's default), so do these.
    """
    _check_batch("autoaugment_cifar", x)
    _check_rgb("autoaugment_cifar", x)
    t = {k: constant(v, x.device, dtype)[draws.subpolicy.to(x.device)] for k, (v, dtype) in AA_TABLES.items()}
    sign = torch.where(t["signed"], _signs(draws.sign.to(x.device)), 1.0)
    arg = t["base"] + sign * t["value"]
    fire = draws.fire.to(x.device) < t["prob"]
    fns = op_fns(fill, shear=shear, move="nearest")
    return apply_slots(x, t["kind"], arg, fire, [fns[op] for op in AA_OPS])


def autoaugment_cifar(x: torch.Tensor, g: torch.Generator, fill: float = FILL) -> torch.Tensor:
    """AutoAugment with the CIFAR-10 policy: a random sub-policy of two ops per image."""
    _check_batch("autoaugment_cifar", x, g)
    return autoaugment_with(x, autoaugment_params(x.shape[0], g), fill)


# --------------------------------------------------------------------------
# RandAugment, timm's 'rand-n{n}-m{m}-mstd{mstd}' (STRONG.md section 3)
# --------------------------------------------------------------------------

#: The 15 ops and each one's level map ``(per-level scale, base, signed, whole)``: for a level l in
#: [0, 10] the argument is ``base + scale * l``, truncated to an integer if ``whole``, negated at random
#: if ``signed``. Rotation 3l degrees, shear 0.03l, translation 0.045l of the side, enhance factor
#: 0.1 + 0.18l, solarize threshold int(25.6l), solarize-add int(11l) below 128, posterize int(0.4l) bits.
RA_OPS: dict[str, tuple[float, float, bool, bool]] = {
    "autocontrast": (0.0, 0.0, False, False),
    "equalize": (0.0, 0.0, False, False),
    "invert": (0.0, 0.0, False, False),
    "rotate": (3.0, 0.0, True, False),
    "posterize": (0.4, 0.0, False, True),
    "solarize": (25.6, 0.0, False, True),
    "solarize_add": (11.0, 0.0, False, True),
    "color": (0.18, 0.1, False, False),
    "contrast": (0.18, 0.1, False, False),
    "brightness": (0.18, 0.1, False, False),
    "sharpness": (0.18, 0.1, False, False),
    "shear_x": (0.03, 0.0, True, False),
    "shear_y": (0.03, 0.0, True, False),
    "translate_x": (0.045, 0.0, True, False),
    "translate_y": (0.045, 0.0, True, False),
}
MAX_LEVEL = 10.0


class RandAugmentDraws(NamedTuple):
    """Per-image RandAugment draws, (N, n) each: the op, whether it fires, its level, its sign."""

    op: torch.Tensor  # long index into RA_OPS
    fire: torch.Tensor  # bool
    level: torch.Tensor  # in [0, MAX_LEVEL]
    sign: torch.Tensor  # -1 or 1


def randaugment_params(count: int, n: int, m: float, mstd: float, p: float,
                       g: torch.Generator) -> RandAugmentDraws:
    """``n`` ops per image, uniform with replacement; each fires with ``p``; level ~ N(m, mstd) clipped."""
    shape = (count, n)
    op = torch.randint(0, len(RA_OPS), shape, generator=g, device=g.device)
    u = torch.rand(count, n, 2, generator=g, device=g.device)
    level = (m + mstd * torch.randn(shape, generator=g, device=g.device)).clamp_(0.0, MAX_LEVEL)
    return RandAugmentDraws(op, u[..., 0] < p, level, _signs(u[..., 1]))


def ra_args(op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Each drawn op's argument from its level, by :data:`RA_OPS`."""
    scale, base, signed, whole = (constant(col, op.device, dtype) for col, dtype in
                                  zip(zip(*RA_OPS.values()), (torch.float32, torch.float32, torch.bool, torch.bool)))
    value = base[op] + scale[op] * level.to(scale.dtype)
    value = torch.where(whole[op], torch.floor(value), value)
    return torch.where(signed[op], sign.to(value.dtype) * value, value)


def randaugment_with(x: torch.Tensor, draws: RandAugmentDraws, fill: float = FILL,
                     mode: str = "bilinear") -> torch.Tensor:
    """Apply the drawn ops. timm picks bilinear or bicubic at random per op; one mode is used here."""
    _check_batch("randaugment", x)
    _check_rgb("randaugment", x)
    op = draws.op.to(x.device)
    arg = ra_args(op, draws.level.to(x.device), draws.sign.to(x.device))
    fns = op_fns(fill, shear=mode, move=mode)
    return apply_slots(x, op, arg, draws.fire.to(x.device), [fns[name] for name in RA_OPS])


def randaugment(x: torch.Tensor, g: torch.Generator, n: int = 2, m: float = 10.0, mstd: float = 0.5,
                p: float = 0.5, fill: float = FILL) -> torch.Tensor:
    """RandAugment: ``n`` random ops per image at magnitude about ``m`` (of 10), each with probability ``p``."""
    _check_batch("randaugment", x, g)
    return randaugment_with(x, randaugment_params(x.shape[0], n, m, mstd, p, g), fill)


# --------------------------------------------------------------------------
# Cutout
# --------------------------------------------------------------------------


def cutout_centres(n: int, height: int, width: int, holes: int,
                   g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, holes) row and column centres, uniform over the image's pixels."""
    cy = torch.randint(0, height, (n, holes), generator=g, device=g.device)
    cx = torch.randint(0, width, (n, holes), generator=g, device=g.device)
    return cy, cx


def cutout(x: torch.Tensor, g: torch.Generator, holes: int = 1, size: int = 16) -> torch.Tensor:
    """Zero ``holes`` squares of side ``size`` per image, centred anywhere, clipped at the borders."""
    _check_batch("cutout", x, g)
    cy, cx = cutout_centres(x.shape[0], x.shape[-2], x.shape[-1], holes, g)
    return O.cutout_with(x, cy, cx, size)


__all__ = [
    "AA_OPS", "AA_TABLES", "CIFAR10_POLICY", "FILL", "RA_OPS", "AutoAugmentDraws", "RandAugmentDraws",
    "aa_magnitude", "apply_slots", "autoaugment_cifar", "autoaugment_params", "autoaugment_with", "cutout",
    "cutout_centres", "op_fns", "ra_args", "randaugment", "randaugment_params",
    "randaugment_with",
]
