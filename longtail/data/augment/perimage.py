"""Sizing ops on decoded images of different shapes: the first step of a file dataset's pipeline.

File images keep their aspect ratio (shorter side = the decode size), so a batch of them is a
list, not a tensor. The op that makes them uniform (a random resized crop for training, a resize
plus centre crop for evaluation) runs here, per image, with Pillow, exactly as torchvision's PIL
transforms do it: the crop box is drawn over the whole image, and the crop is resized with
Pillow's antialiased bilinear filter. Every later op then runs batched on the device.

Images decoded on a GPU (``torch.Tensor`` ``(3, H, W)``) take the same boxes and sizes, resized by
``F.interpolate(..., antialias=True)``, torch's port of Pillow's filter (within a few grey levels).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..decode import target_size
from .geometry import resized_crop_boxes


@dataclass
class ImageList:
    """Decoded RGB images, each uint8 ``(H, W, 3)`` of its own size (or a ``(3, H, W)`` tensor decoded on a
    GPU), and the device their batch goes to.

    ``map`` runs the per-image work (Pillow releases the GIL): the decoding store's thread pool.
    """

    images: list[np.ndarray | torch.Tensor]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    map: Callable = field(default=map, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device, non_blocking: bool = False) -> "ImageList":
        return ImageList(self.images, torch.device(device), self.map)

    @property
    def sizes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) heights and widths."""
        hw = torch.tensor([_hw(a) for a in self.images], dtype=torch.long).reshape(-1, 2)
        return hw[:, 0], hw[:, 1]


def _hw(a) -> tuple[int, int]:
    return tuple(a.shape[1:]) if isinstance(a, torch.Tensor) else a.shape[:2]


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Float ``(3, h, w)``, not yet rounded: antialiased bilinear, as Pillow's BILINEAR. Two kernels an image
    (the images differ in size); the rounding to uint8 runs once on the stacked batch (``_stack``)."""
    return F.interpolate(x[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]


def _stack(crops: list, size: int, device: torch.device) -> torch.Tensor:
    if not crops:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=device)
    if isinstance(crops[0], torch.Tensor):  # decoded on the device: float crops, rounded together
        return torch.stack([c.float() for c in crops]).round_().clamp_(0, 255).to(torch.uint8).to(device)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    if device.type == "cuda":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def _pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a)


def crop_resize_images(images: ImageList, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(N, 3, size, size)``: each image cut to its ``(top, left, h, w)`` box, resized (PIL bilinear)."""
    from PIL import Image

    def one(a, box):
        top, left, h, w = box
        if isinstance(a, torch.Tensor):
            return _resize(a[:, top:top + h, left:left + w], size, size)
        im = _pil(a).crop((left, top, left + w, top + h))  # crop, then resize: torchvision's F.resized_crop
        return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))

    return _stack(list(images.map(one, images.images, boxes.tolist())), size, images.device)


def random_resized_crop_images(images: ImageList, g: torch.Generator, size: int,
                               scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` on each whole image."""
    h, w = images.sizes
    boxes = resized_crop_boxes(len(images), h, w, scale, ratio, g).cpu()
    return crop_resize_images(images, boxes, size)


def resize_shorter(im, size: int):
    """torchvision's ``Resize(size)`` on a PIL image: shorter side to ``size``, the longer one truncated."""
    from PIL import Image

    h, w = target_size(im.size[1], im.size[0], size)
    return im if (w, h) == im.size else im.resize((w, h), Image.Resampling.BILINEAR)


def center_crop_resize_images(images: ImageList, size: int, crop_fraction: float = 0.875) -> torch.Tensor:
    """torchvision's ``Resize(round(size / crop_fraction))`` then ``CenterCrop(size)`` (256 then 224 by default)."""
    def one(a):
        resize = int(round(size / crop_fraction))
        if isinstance(a, torch.Tensor):
            th, tw = target_size(*_hw(a), resize)
            a = a if _hw(a) == (th, tw) else _resize(a, th, tw)
            top, left = int(round((th - size) / 2.0)), int(round((tw - size) / 2.0))
            return a[:, top:top + size, left:left + size]
        im = resize_shorter(_pil(a), resize)
        w, h = im.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        return np.asarray(im.crop((left, top, left + size, top + size)))

    return _stack(list(images.map(one, images.images)), size, images.device)


def square_images(images: ImageList) -> torch.Tensor:
    """The centre square of the shorter side, for pipelines that start with a batched op (small uniform images)."""
    side = min((min(_hw(a)) for a in images.images), default=1)
    return center_crop_resize_images(images, side, 1.0)
