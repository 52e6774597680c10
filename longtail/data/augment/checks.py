"""Shared checks of the batched ops (shapes, devices, channels), and their constants."""
from __future__ import annotations

import functools

import torch

from longtail.errors import ConfigError

# ITU-R BT.601 luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@functools.lru_cache(maxsize=256)
def constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant, built once per (values, device, dtype), as timm builds its mean and std once per
    device: made in a step, it would be a host-to-device copy every step. Never modify the result in place."""
    return torch.tensor(values, dtype=dtype, device=device)


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
