"""The look-ahead thread's own CUDA stream, as timm's PrefetchLoader has one.

The next batch's decoding (nvJPEG), its per-image cut and its host-to-device copy run on a side stream,
so they overlap the training step queued on the main one instead of being serialised with it. Two
hazards come with a second stream, and both are handled here:

* nvJPEG may write its output outside stream order (torchvision PR #9606, torchcodec PR #1634: rows
  corrupted on an H100 with torch 2.13 when the decode shared the training stream). Side-stream memory
  only ever holds side-stream tensors, and the side stream is drained before each decode, so no block
  nvJPEG is handed can still be read by a queued kernel.
* Tensors made on the side stream are read on the main one: the main stream waits on an event recorded
  after them, and ``record_stream`` keeps the allocator from reusing their memory before it is done.

On the CPU every method here is a no-op, so the same code path runs everywhere.
"""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An asynchronous copy where the device has its own memory: from pinned host memory, never pageable."""
    if device.type == "cuda" and not t.is_cuda:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class SideStream:
    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def run(self, fn, *args):
        """On the look-ahead thread: ``(fn(*args), done)``, the work queued on the side stream."""
        if self.stream is None:
            return fn(*args), None
        with torch.cuda.stream(self.stream):
            self.stream.synchronize()  # blocks this thread only: no earlier side kernel still reads a block
            out = fn(*args)
            done = torch.cuda.Event()
            done.record(self.stream)
        return out, done

    def hand_over(self, out, done):
        """On the consuming thread: ``out``, safe to use on its current stream."""
        if done is None:
            return out
        main = torch.cuda.current_stream(self.stream.device)
        main.wait_event(done)
        for t in _tensors(out):
            if t.is_cuda:
                t.record_stream(main)
        return out
