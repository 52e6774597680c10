"""MoCo v2 parts for SSD's instance-discrimination stage: momentum encoder, queue, InfoNCE."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .shuffle_bn import all_gather_cat, set_bn_groups, shuffle_across_ranks, split_batchnorm, unshuffle_across_ranks, world_size


def projection_mlp(in_dim: int, out_dim: int = 128, hidden: int | None = None) -> nn.Sequential:
    """MoCo v2's 2-layer MLP head (2048-2048-128 on a ResNet-50 feature)."""
    hidden = hidden or in_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE (MoCo Eq. 1): -log exp(q.k/tau) / (exp(q.k/tau) + sum_queue exp(q.n/tau)); q, k, queue L2-normalised.

    ``negative_mask`` (B, K) removes queue entries from the denominator (True = drop), e.g. same-label keys.
    """
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    if negative_mask is not None:
        neg = neg.masked_fill(negative_mask, float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q (MoCo Eq. 2)."""
    for pk, pq in zip(key.parameters(), query.parameters()):
        pk.mul_(m).add_(pq.detach(), alpha=1 - m)


class MoCo(nn.Module):
    """Query projector, momentum key encoder (a copy of the feature extractor + projector) and a queue of keys.

    The key encoder's BatchNorm never sees the query's batch as it is (see ``shuffle_bn``): under DDP the
    global batch is shuffled across ranks; on one device it is shuffled and normalised in ``bn_splits``
    groups. ``bn_splits`` is unused under DDP, where each rank's slice is one BN batch, as in MoCo.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, tau: float = 0.2, mlp: bool = True, bn_splits: int = 8):
        super().__init__()
        if not isinstance(bn_splits, int) or isinstance(bn_splits, bool) or bn_splits < 1:
            raise ValueError(f"MoCo bn_splits must be a positive integer, got {bn_splits!r}")
        self.momentum, self.tau, self.bn_splits = momentum, tau, bn_splits
        self.q_proj = projection_mlp(feature_dim, dim) if mlp else nn.Linear(feature_dim, dim)
        self.k_encoder = split_batchnorm(copy.deepcopy(encoder)).requires_grad_(False)
        self.k_proj = copy.deepcopy(self.q_proj).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def reset_keys(self, encoder: nn.Module) -> None:
        """Set the key encoder and projector to the query's (MoCo starts theta_k = theta_q). The copy made at
        construction predates any weight load (``init:``, pretrained), so call this once the query's are in."""
        self.k_encoder.load_state_dict(encoder.state_dict())
        self.k_proj.load_state_dict(self.q_proj.state_dict())

    @torch.no_grad()
    def keys(self, encoder: nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Update the key encoder from the query ``encoder``, then embed ``x`` with it: row i is the key of
        ``x[i]``, whatever shuffle its BatchNorm saw. ``g`` draws the shuffle (rank 0's, under DDP)."""
        momentum_update(self.k_encoder, encoder, self.momentum)
        momentum_update(self.k_proj, self.q_proj, self.momentum)
        if world_size() > 1:
            set_bn_groups(self.k_encoder, 1)
            x_mine, perm = shuffle_across_ranks(x, g)
            return unshuffle_across_ranks(self._embed(x_mine), perm)
        set_bn_groups(self.k_encoder, self.bn_splits)
        perm = torch.randperm(len(x), generator=g, device=g.device).to(x.device)
        return self._embed(x[perm])[torch.argsort(perm)]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.k_proj(self.k_encoder(x)).float(), dim=1)

    def loss(self, feat: torch.Tensor, k: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        q = F.normalize(self.q_proj(feat).float(), dim=1)
        mask = None if labels is None else labels[:, None] == self.queue_labels[None, :]
        return info_nce(q, k, self.queue.detach().clone(), self.tau, mask)

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor, labels: torch.Tensor) -> None:
        k, labels = all_gather_cat(k), all_gather_cat(labels)
        n, size = len(k), len(self.queue)
        idx = (self.ptr + torch.arange(n, device=k.device)) % size
        self.queue[idx] = k.to(self.queue.dtype)
        self.queue_labels[idx] = labels
        self.ptr.copy_((self.ptr + n) % size)  # on the device: int() here would be a host sync every step
