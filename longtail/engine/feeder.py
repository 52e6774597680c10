"""Turns the batch plan into augmented (and perhaps mixed) device batches, one per stream, as airbench does:
the epoch's plan and the labels live on the device, and a step only slices and indexes there."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..data.augment import Augment
from ..data.augment.mix import Mixer
from ..data.images import ImageSet, TensorStore
from ..methods.base import Batch
from .passes import decode_on_device
from .runtime import Runtime, derive_seed, step_generator
from .streams import SideStream, to_device

CPU = torch.device("cpu")


class BatchLoader:
    """Tensor-held data is indexed in place on its device. File-backed data is decoded and cut to the input
    size (the augmentation's per-image first op) one step ahead on a background thread and its own CUDA
    stream, so this overlaps the previous step's compute. That cut draws from a CPU generator of its own,
    seeded by (seed, stage, rank, epoch, step, stream), so a resumed run cuts the same crops; the remaining
    ops, and the mixing, run batched on the device from the step's seeds.

    ``views`` (``{stream: {name: Augment}}``): extra augmented views of the same images a method asks for
    (MoCo's key view), cut on the look-ahead thread too, and handed to the method as ``Batch.views``.
    """

    def __init__(self, split: ImageSet, augment: Augment, rt: Runtime, *seed_parts, mixer: Mixer | None = None,
                 views: dict[str, dict[str, Augment]] | None = None):
        self.split, self.augment, self.rt, self.seed_parts, self.mixer = split, augment, rt, seed_parts, mixer
        self.views = views or {}
        decode_on_device(split, rt)
        self.tensors = isinstance(split.store, TensorStore)
        self.pool = None if self.tensors else ThreadPoolExecutor(1, thread_name_prefix="feed")
        self.side = SideStream(rt.device)
        self.labels = to_device(torch.from_numpy(split.labels), rt.device)  # once: steps index it on the device
        self.epoch, self.batches, self.plan, self.prefetched = 0, {}, {}, {}

    def start_epoch(self, epoch: int, batches: dict[str, list[np.ndarray]]) -> None:
        """This rank's index batches of ``epoch`` per stream: one copy of each stream's whole plan to the device."""
        self.epoch, self.batches, self.prefetched = epoch, batches, {}
        for name, b in batches.items():
            bounds = np.cumsum([0] + [len(i) for i in b]).tolist()
            self.plan[name] = (to_device(torch.from_numpy(np.concatenate(b).astype(np.int64)), self.rt.device), bounds)

    def _index(self, stream: str, step: int) -> torch.Tensor:
        flat, bounds = self.plan[stream]
        return flat[bounds[step]:bounds[step + 1]]

    def _cut(self, stream: str, step: int) -> dict[str, torch.Tensor]:
        """File data: the batch decoded and cut to the input size, for the input and every view, on the device."""
        key = (self.epoch, step, stream)
        images, _ = self.split.load(self.batches[stream][step])
        cut = {"x": self.augment.size_images(images, step_generator(CPU, *self.seed_parts, *key, "size"))}
        for name, aug in self.views.get(stream, {}).items():
            cut[name] = aug.size_images(images, step_generator(CPU, *self.seed_parts, *key, "size", name))
        return {k: to_device(v, self.rt.device) for k, v in cut.items()}

    def prefetch(self, stream: str, step: int) -> None:
        if self.pool is not None:
            self.prefetched[(stream, step)] = self.pool.submit(self.side.run, self._cut, stream, step)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.rt.channels_last else x

    def fetch(self, stream: str, step: int, g: torch.Generator) -> Batch:
        """Step ``step``'s batch of ``stream`` in the current epoch, augmented from the step's generator ``g``."""
        index = self._index(stream, step)
        if self.tensors:
            store = self.split.store
            on_store = index if store.images.device == index.device else torch.from_numpy(self.batches[stream][step])
            cut, already_cut = {"x": to_device(store.load(on_store), self.rt.device)}, False
        else:
            job: Future | None = self.prefetched.pop((stream, step), None)
            cut, already_cut = self.side.hand_over(*(job.result() if job is not None else self.side.run(self._cut, stream, step))), True
        x = self._layout(self.augment(cut["x"], g, already_cut=already_cut))
        views = {name: self._layout(aug(cut.get(name, cut["x"]), g, already_cut=already_cut))
                 for name, aug in self.views.get(stream, {}).items()}
        y = self.labels[index]
        mix = None
        if self.mixer is not None and self.mixer.active(self.epoch):  # after the ops: teachers score the mixed batch too
            x, mix = self.mixer(x, y, derive_seed(*self.seed_parts, self.epoch, step, stream, "mix") & 0x7FFFFFFF)
        return Batch(x, y, views, epoch=self.epoch, mix=mix)


def stage_loader(ctx, method, seed: int) -> BatchLoader:
    """The loader of a stage's training split: its augmentation, mixing, and the views its method's feeds ask for."""
    stage = ctx.stage
    views = {name: {v: ctx.augment(spec) for v, spec in f.views.items()} for name, f in method.feeds().items()}
    return BatchLoader(ctx.data.train, ctx.augment(stage.augment), ctx.runtime, seed, stage.name, ctx.runtime.rank,
                       mixer=Mixer(stage.mix), views=views)
