"""A small synthetic long-tailed dataset: learnable, instant, no files.

Used by tests, benchmarks and ``dataset: synthetic`` smoke runs. Class ``c``
images are noise around a class-specific colour pattern, so a network learns
them in a few epochs, and the training counts follow the CIFAR-LT profile.
"""
from __future__ import annotations

import numpy as np
import torch

from .images import DataBundle, ImageSet, TensorStore


def synthetic_bundle(num_classes: int = 10, max_per_class: int = 100, imbalance: float = 10.0, size: int = 16,
                     test_per_class: int = 20, val_per_class: int = 5, seed: int = 0) -> DataBundle:
    rng = np.random.default_rng(seed)
    counts = [int(max_per_class * (1 / imbalance) ** (c / max(1, num_classes - 1))) for c in range(num_classes)]
    patterns = rng.uniform(40, 215, size=(num_classes, 3, 1, 1)) + rng.normal(0, 50, size=(num_classes, 3, size, size))

    def split(per_class: list[int], name: str) -> ImageSet:
        labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(per_class)])
        images = patterns[labels] + rng.normal(0, 30, size=(len(labels), 3, size, size))
        return ImageSet(TensorStore(torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8))), labels, name)

    return DataBundle(
        name="synthetic", num_classes=num_classes, class_names=[f"class{c}" for c in range(num_classes)],
        train=split(counts, "train"), val=split([val_per_class] * num_classes, "val"),
        test=split([test_per_class] * num_classes, "test"),
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=size,
        source={"dataset": "synthetic", "seed": seed, "counts": counts},
    )
