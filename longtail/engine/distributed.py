"""Evaluation and post-hoc passes under DDP: every rank scores a share, every rank gets the whole.

Rank ``r`` of ``w`` scores evaluation batches ``r, r + w, ...`` of the list one process would score
(``evaluate.eval_batches``), on rank 0's weights and BatchNorm statistics. The outputs are gathered
one round of ``w`` batches at a time, so device memory holds ``w`` batches whatever the split's size,
and put back in dataset order. Nothing pads a batch: a rank without a batch in the last round sends a
placeholder that every rank drops by the batch sizes they all know, so each image is scored once.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .runtime import Runtime


@torch.no_grad()
def sync_from_main(model: nn.Module, rt: Runtime) -> None:
    """Give every rank rank 0's weights and buffers.

    Under DDP the weights already agree, but each rank's BatchNorm running statistics last moved on its
    own share of the batches (DDP runs with ``broadcast_buffers=False``). Training never reads them (BatchNorm
    normalises by the batch in train mode), and the buffers training does read are equal on every rank (MoCo's
    queue and ProCo's class estimates fold in all-gathered features), so doing it before an evaluation never
    changes training.
    """
    if not rt.distributed:
        return
    for t in model.state_dict().values():
        if t.is_contiguous():
            dist.broadcast(t, 0)
        else:  # channels_last conv weights: collectives need a dense layout
            dense = t.contiguous()
            dist.broadcast(dense, 0)
            t.copy_(dense)


def broadcast_object(obj, rt: Runtime):
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_batches(mine: list[torch.Tensor], sizes: list[int], rt: Runtime) -> torch.Tensor:
    """All batches' outputs in batch order, on the CPU of every rank.

    ``mine`` are this rank's outputs (batches ``rank, rank + world, ...``); ``sizes`` are the images in
    every batch of the split, which every rank knows without asking.
    """
    if not rt.distributed:
        return torch.cat(mine).cpu() if mine else torch.empty(0)
    if not sizes:
        return torch.empty(0)
    # rank 0 always holds batch 0, so it alone knows an output's shape for a rank that scored nothing
    tail = broadcast_object(tuple(mine[0].shape[1:]) if rt.is_main else None, rt)
    width = max(sizes)
    parts = []
    for first in range(0, len(sizes), rt.world):
        buf = torch.zeros((width, *tail), dtype=torch.float32, device=rt.device)
        own = mine[first // rt.world] if first // rt.world < len(mine) else None
        if own is not None:
            buf[: len(own)] = own.to(rt.device)
        got = [torch.empty_like(buf) for _ in range(rt.world)]
        dist.all_gather(got, buf)
        parts += [t[: sizes[first + r]].cpu() for r, t in enumerate(got) if first + r < len(sizes)]
    return torch.cat(parts)
