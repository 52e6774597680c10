"""The in-memory form every dataset is turned into.

A dataset becomes a :class:`DataBundle` of three :class:`ImageSet` splits. An
ImageSet hands out uint8 batches ``(n, 3, H, W)`` by index, so the engine can
sample indices itself (samplers live outside the data, never in
``__getitem__``) and augment whole batches on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


class ImageStore(Protocol):
    """Anything that returns uint8 images ``(n, 3, H, W)`` for an index array, or (file datasets) an
    :class:`~longtail.data.augment.ImageList` of images of their own sizes."""

    def __len__(self) -> int: ...

    def load(self, index: np.ndarray) -> torch.Tensor: ...


class TensorStore:
    """Images held as one uint8 tensor, on the CPU or on the training device."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 (N,C,H,W) images, got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long, device=self.images.device)
        return self.images.index_select(0, index)

    def to(self, device) -> "TensorStore":
        return TensorStore(self.images.to(device))


@dataclass
class ImageSet:
    """One split: an image store and its integer labels."""

    store: ImageStore
    labels: np.ndarray  # int64 (N,)
    name: str = ""

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.store) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.store)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index) -> tuple[torch.Tensor, np.ndarray]:
        index = np.asarray(index, dtype=np.int64)
        return self.store.load(index), self.labels[index]

    def to(self, device) -> "ImageSet":
        """Move a tensor-backed split to ``device`` (file-backed splits stay on disk)."""
        if isinstance(self.store, TensorStore):
            return ImageSet(self.store.to(device), self.labels, self.name)
        return self


@dataclass
class DataBundle:
    """Train / validation / test splits of one dataset, plus what evaluation needs."""

    name: str
    num_classes: int
    class_names: list[str]
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int  # the stored images' side (file datasets: the shorter side, aspect kept)
    source: dict = field(default_factory=dict)  # provenance: files, md5s, split rules
    crop_size: int = 0  # the model's input side, if not image_size (file datasets: 224 crops of 256)

    @property
    def input_size(self) -> int:
        return self.crop_size or self.image_size

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train.labels, minlength=self.num_classes)
