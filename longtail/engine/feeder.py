"""Turns the batch plan's index arrays into augmented (and perhaps mixed) device batches, one per stream."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..data.augment import Augment, ImageList
from ..data.augment.mix import Mixer
from ..data.images import ImageSet, TensorStore
from ..methods.base import Batch
from .passes import decode_on_device, size_to_input
from .runtime import Runtime, derive_seed, step_generator


class BatchLoader:
    """Tensor-held data is indexed in place. File-backed data is decoded and cut to the input size
    (the augmentation's per-image first op) one step ahead on a background thread, so this overlaps
    the previous step's compute. That cut draws from a CPU generator of its own, seeded by (seed,
    stage, rank, epoch, step, stream), so a resumed run cuts the same crops; the remaining ops, and
    the mixing, run batched on the device from the step's seeds.
    """

    def __init__(self, split: ImageSet, augment: Augment, rt: Runtime, *seed_parts, mixer: Mixer | None = None):
        self.split, self.augment, self.rt, self.seed_parts, self.mixer = split, augment, rt, seed_parts, mixer
        decode_on_device(split, rt)
        self.pool = None if isinstance(split.store, TensorStore) else ThreadPoolExecutor(1, thread_name_prefix="feed")
        self.next_batch: dict[tuple, tuple[np.ndarray, Future]] = {}  # (epoch, step, stream) -> its index and load

    def _prepare(self, index: np.ndarray, key: tuple):
        """``(input, raw, labels, sized)``: for file data the cut uint8 batch, else the raw one."""
        raw, labels = self.split.load(index)
        if not isinstance(raw, ImageList):
            return raw, raw, labels, False
        x, _ = size_to_input(self.augment, raw, step_generator(torch.device("cpu"), *self.seed_parts, *key, "size"))
        if self.rt.device.type == "cuda" and not x.is_cuda:
            x = x.pin_memory()
        return x, raw.to(self.rt.device), labels, True

    def prefetch(self, index: np.ndarray, key: tuple) -> None:
        if self.pool is not None:
            self.next_batch[key] = (index, self.pool.submit(self._prepare, index, key))

    def fetch(self, index: np.ndarray, g: torch.Generator, key: tuple) -> Batch:
        """The batch of ``index``; ``key`` = (epoch, step, stream) names it for the cut's generator."""
        ahead = self.next_batch.pop(key, None)
        if ahead is not None and np.array_equal(ahead[0], index):
            x, raw, labels, sized = ahead[1].result()
        else:
            x, raw, labels, sized = self._prepare(index, key)
        x = x.to(self.rt.device, non_blocking=True)
        if not sized:
            raw = x
        x = self.augment(x, g, sized=sized)
        if self.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels).to(self.rt.device, non_blocking=True)
        mix = None
        if self.mixer is not None and self.mixer.active(key[0]):  # after the ops: teachers score the mixed batch too
            x, mix = self.mixer(x, y, derive_seed(*self.seed_parts, *key, "mix") & 0x7FFFFFFF)
        return Batch(x, y, raw, epoch=key[0], mix=mix)
