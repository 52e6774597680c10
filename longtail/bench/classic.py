"""The classic input pipeline that the peers use, for comparison with the engine's.

A per-sample ``Dataset`` builds one PIL image per ``__getitem__``, pads / crops / flips it with PIL,
converts and normalises it with NumPy, and ``torch.utils.data.DataLoader`` batches it in worker
processes. The batches feed the same CE step as the engine's (``measure_stage``).
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from ..engine.context import StageContext
from ..methods import Batch, get_method
from .stepcost import measure_stage

PAD = 4


class PILImages(torch.utils.data.Dataset):
    """One PIL image per item, randomly padded-cropped and flipped: CIFAR's standard augmentation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std):
        self.images, self.labels = images, labels  # uint8 (N, 3, H, W)
        self.size = images.shape[-1]
        self.mean = np.array(mean, dtype=np.float32)[:, None, None]
        self.std = np.array(std, dtype=np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image, ImageOps

        img = ImageOps.expand(Image.fromarray(self.images[i].transpose(1, 2, 0)), border=PAD, fill=0)
        top, left = np.random.randint(0, 2 * PAD + 1, size=2)
        img = img.crop((left, top, left + self.size, top + self.size))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0 - self.mean) / self.std
        return torch.from_numpy(x), int(self.labels[i])


def forever(loader) -> Iterator:
    while True:
        yield from loader


def classic_pipeline(ctx: StageContext, steps: int, warmup: int, workers: int) -> dict:
    """The PIL DataLoader alone, then feeding ``ctx``'s CE step: images/s of each."""
    rt, train = ctx.runtime, ctx.data.train
    images = train.store.load(np.arange(len(train))).cpu().numpy()
    ds = PILImages(images, train.labels, ctx.data.mean, ctx.data.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=ctx.stage.batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0, pin_memory=rt.device.type == "cuda")
    it = forever(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    loader_alone = ctx.stage.batch_size * steps / (time.perf_counter() - t0)

    def batches(i: int) -> dict[str, Batch]:
        x, y = next(it)
        x = x.to(rt.device, non_blocking=True)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {"x": Batch(x, y.to(rt.device, non_blocking=True))}

    res = measure_stage(get_method("ce")(ctx), batches, steps, warmup)
    return {**res, "loader_alone_images_per_s": round(loader_alone, 1), "workers": workers}
