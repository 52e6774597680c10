"""Keep MoCo's key encoder from reading the batch through BatchNorm.

A key and its query are two views of one image. When the key encoder's BatchNorm statistics come from
the same images that share the query's BatchNorm batch, the batch statistics themselves carry a signal
that helps pick the positive, and the model can lower the contrastive loss by that route instead of
learning a good representation (MoCo, He et al. CVPR 2020, Sec. 3.3 "Shuffling BN"). The key encoder
therefore sees the batch grouped differently from the query encoder:

* several processes (MoCo's ``main_moco.py``; SSD's official ``SSD_LT/builder.py`` does the same):
  gather the key inputs of every rank, draw one permutation of the global batch on rank 0 and
  broadcast it, let each rank forward its slice of the permuted batch, gather the keys and put each
  back beside its query. :func:`shuffle_across_ranks` / :func:`unshuffle_across_ranks`.
* one device (MoCo's single-GPU CIFAR-10 demo, ``SplitBatchNorm`` with 8 splits): shuffle the batch,
  normalise each of N groups with that group's own statistics, as if the groups sat on N GPUs, and
  unshuffle. :class:`GhostBatchNorm` (swapped in by :func:`split_batchnorm`) and :func:`set_bn_groups`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` stacked in rank order (no gradient); every rank must pass the same shape."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in ``x``'s memory format: the gather above makes channels_last batches contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return y.contiguous(memory_format=torch.channels_last)
    return y


@torch.no_grad()
def shuffle_across_ranks(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a random permutation of the global batch, and the permutation itself.

    Rank 0 draws the permutation from its ``g`` (the engine's per-step generator, so a run replays) and
    broadcasts it. The engine's samplers give every rank an equal share, which the gather needs.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    full = all_gather_cat(x)
    if rank == 0:
        perm = torch.randperm(len(full), generator=g, device=g.device).to(x.device)
    else:
        perm = torch.empty(len(full), dtype=torch.long, device=x.device)
    dist.broadcast(perm, src=0)
    return _like(full[perm.view(world, -1)[rank]], x), perm


@torch.no_grad()
def unshuffle_across_ranks(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The outputs of this rank's own inputs, in their order, from every rank's outputs on its shuffled slice."""
    world, rank = dist.get_world_size(), dist.get_rank()
    full = all_gather_cat(y)  # row j: the output for global input perm[j]
    return full[torch.argsort(perm).view(world, -1)[rank]]


class GhostBatchNorm:
    """BatchNorm that, in training with ``groups`` > 1, normalises consecutive slices of the batch
    separately. Mixed into the torch BatchNorm classes by :func:`split_batchnorm`.

    A batch that ``groups`` does not divide gets slices whose sizes differ by one (``tensor_split``);
    a batch smaller than ``2 * groups`` gets ``len // 2`` slices, because a group of a single sample
    has no batch variance to speak of. In evaluation the running statistics are used, as usual.
    """

    groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = min(self.groups, len(x) // 2)
        if not self.training or groups <= 1:
            return super().forward(x)
        self._check_input_dim(x)
        track = self.track_running_stats and self.running_mean is not None
        m = 0.0
        means = variances = None
        if track:
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            # Each group moves its own copy of the running estimates; their mean equals one update with
            # the groups' mean statistics, so the estimates stay comparable to a plain BN's.
            means = self.running_mean.expand(groups, -1).clone()
            variances = self.running_var.expand(groups, -1).clone()
        out = [F.batch_norm(part, means[i] if track else None, variances[i] if track else None, self.weight, self.bias,
                            True, m, self.eps) for i, part in enumerate(x.tensor_split(groups))]
        if track:
            self.running_mean.copy_(means.mean(0))
            self.running_var.copy_(variances.mean(0))
        return torch.cat(out)


class GhostBatchNorm1d(GhostBatchNorm, nn.BatchNorm1d):
    pass


class GhostBatchNorm2d(GhostBatchNorm, nn.BatchNorm2d):
    pass


class GhostBatchNorm3d(GhostBatchNorm, nn.BatchNorm3d):
    pass


_GHOST = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d, nn.BatchNorm3d: GhostBatchNorm3d}


def split_batchnorm(module: nn.Module) -> nn.Module:
    """Make every plain BatchNorm in ``module`` a :class:`GhostBatchNorm` (``groups`` 1: unchanged behaviour).

    The class is swapped on the existing objects, so weights, buffers, device, state_dict keys and the
    parameter order that ``momentum_update`` zips against the query encoder all stay as they were.
    """
    for sub in module.modules():
        if type(sub) in _GHOST:
            sub.__class__ = _GHOST[type(sub)]
    return module


def set_bn_groups(module: nn.Module, groups: int) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"BatchNorm groups must be a positive integer, got {groups!r}")
    for sub in module.modules():
        if isinstance(sub, GhostBatchNorm):
            sub.groups = groups
