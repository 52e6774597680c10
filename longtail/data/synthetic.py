"""A small synthetic long-tailed dataset: learnable, instant, no files.

Used by tests, benchmarks and ``dataset: synthetic`` smoke runs. Class ``c``
images are noise around a class-specific colour pattern, so a network learns
them in a few epochs, and the training counts follow the CIFAR-LT profile.
Also natural-looking JPEG folders (1/f noise) for the file-image tests and ``bench data``.
"""
from __future__ import annotations

from pathlib import Path

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


def natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 ``(h, w, 3)`` with a 1/f amplitude spectrum (that of natural images) and milder colour."""
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    f[0, 0] = 1.0
    amp = 1.0 / f
    amp[0, 0] = 0.0

    def field(scale: float) -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, amp.shape)
        x = np.fft.irfft2(amp * scale * np.exp(1j * phase), s=(h, w))
        return x / (x.std() + 1e-12)

    luma, chroma = field(1.0), [field(1.0) * 0.35 for _ in range(2)]
    rgb = np.stack([luma + chroma[0], luma - 0.5 * chroma[0] - 0.5 * chroma[1], luma + chroma[1]], axis=-1)
    return np.clip(128 + 40 * rgb, 0, 255).astype(np.uint8)


def make_jpeg_folder(root: Path, n: int, classes: int = 10, size=(500, 375), quality: int = 90, seed: int = 0) -> Path:
    """``n`` generated JPEGs (``size`` = width, height; portrait every fourth) in ``classes`` folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = size if i % 4 else size[::-1]
        path = root / f"class{i % classes:02d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(natural_image(rng, h, w)).save(path, format="JPEG", quality=quality)
    return root


EXAMPLE_SIZES = ((320, 240), (240, 320), (500, 375), (200, 200), (128, 96))  # (width, height)
EXAMPLE_CLASSES = ("apple", "birch", "coral", "dune", "ember", "fjord", "glacier", "heath", "iris", "jade",
                   "kelp", "lava", "moss", "nebula", "opal", "pine")


def make_example_folder(root: Path, classes: int = 10, max_per_class: int = 200, imbalance: float = 20.0,
                        seed: int = 0) -> tuple[Path, list[int]]:
    """A long-tailed photo-like folder ``root/<class>/*``: class ``c`` has ``max / imbalance^(c / (C-1))`` images.

    Each class has its own colour cast and a shape (a disc, bar or ring at its own place) over 1/f noise, so
    it is learnable at 64 px. Sizes are mixed (landscape, portrait, square, small); every 7th image is a
    greyscale JPEG and every 11th an RGBA PNG, as real folders are. Returns the root and the counts.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [EXAMPLE_CLASSES[c] if c < len(EXAMPLE_CLASSES) else f"class{c:03d}" for c in range(classes)]
    tints = rng.uniform(-60, 60, (classes, 3))
    counts = [max(2, int(max_per_class * (1 / imbalance) ** (c / max(1, classes - 1)))) for c in range(classes)]
    k = 0
    for c, (name, n) in enumerate(zip(names, counts)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = EXAMPLE_SIZES[k % len(EXAMPLE_SIZES)]
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            cy, cx = 0.25 + 0.5 * ((c * 0.37) % 1), 0.25 + 0.5 * ((c * 0.61) % 1)
            r = np.hypot(yy - cy * h / max(h, w), xx - cx * w / max(h, w))
            shape = [r < 0.18, np.abs(yy - cy * h / max(h, w)) < 0.06, np.abs(r - 0.2) < 0.04][c % 3]
            img = natural_image(rng, h, w).astype(np.float64) * 0.6 + 50 + tints[c]
            img[shape] = img[shape] * 0.4 + 150
            a = np.clip(img, 0, 255).astype(np.uint8)
            if k % 7 == 3:
                Image.fromarray(a).convert("L").save(root / name / f"{name}_{i:04d}.jpg", quality=90)
            elif k % 11 == 5:
                alpha = np.full((h, w, 1), 255, np.uint8)
                Image.fromarray(np.concatenate([a, alpha], axis=2), "RGBA").save(root / name / f"{name}_{i:04d}.png")
            else:
                Image.fromarray(a).save(root / name / f"{name}_{i:04d}.jpg", quality=90)
            k += 1
    return root, counts
