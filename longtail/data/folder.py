"""A user's own data: ``root/<class>/<images>``, long-tailed as it is.

Classes are the sub-folders of ``root`` sorted by name (hidden ones skipped);
images are the files below each, searched recursively, with the extensions
jpg, jpeg, png, bmp or webp in any case.

Without split lists (``data.train_split``...), train/val/test come from this rule,
which depends only on the file names, ``data.val_seed`` and
``data.val_per_class``:

- per class, the file names are sorted, then permuted by
  ``RandomState([seed, crc32(class name)])``, so a class's split does not move
  when other classes change;
- class ``c`` with ``n_c`` images gives ``t_c = min(T, n_c // 5)`` test images,
  then ``v_c = min(V, n_c // 10)`` validation images, and keeps the rest
  (at least 70%, so at least one image) for training;
- ``T = min(100, median(n_c // 5))`` and
  ``V = min(val_per_class, median(n_c // 10))``. With the caps set at the
  median, at least half of the classes (all of them when every class is big
  enough) have exactly T test images, so the test set is balanced where the
  counts allow; only tail classes below the median give fewer (those with fewer
  than 5 images give none and have no test accuracy).
"""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import DataBundle, ImageSet
from .splitfile import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_note,
    drop_bad_images,
    file_store,
    image_sizes,
    load_split_dataset,
    split_train_counts,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEST_CAP = 100


def scan_folder(root) -> tuple[list[str], list[list[str]]]:
    """Class names and, per class, the sorted image paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders")
    files = []
    for name in classes:
        found = sorted(
            p.relative_to(root).as_posix()
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )
        if not found:
            raise DataError(f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        files.append(found)
    return classes, files


def split_folder(classes: list[str], files: list[list[str]], val_per_class: int, seed: int):
    """``{"train"|"val"|"test": (paths, labels)}`` and the caps ``(T, V)``, by the module's rule."""
    n = np.array([len(f) for f in files])
    cap_test = int(min(TEST_CAP, np.median(n // 5)))
    cap_val = int(min(val_per_class, np.median(n // 10)))
    out = {s: ([], []) for s in ("train", "val", "test")}
    for label, (name, paths) in enumerate(zip(classes, files)):
        order = np.random.RandomState([seed, zlib.crc32(name.encode())]).permutation(len(paths))
        t, v = min(cap_test, len(paths) // 5), min(cap_val, len(paths) // 10)
        for split, idx in (("test", order[:t]), ("val", order[t : t + v]), ("train", order[t + v :])):
            chosen = [paths[i] for i in sorted(idx)]
            out[split][0].extend(chosen)
            out[split][1].extend([label] * len(chosen))
    return {s: (p, np.asarray(y, dtype=np.int64)) for s, (p, y) in out.items()}, (cap_test, cap_val)


def _has_split_files(cfg) -> bool:
    return bool(cfg.train_split or cfg.val_split or cfg.test_split)


def folder_train_counts(root, cfg) -> np.ndarray:
    if _has_split_files(cfg):
        return split_train_counts("folder", root, cfg)
    classes, files = scan_folder(root)
    splits, _ = split_folder(classes, files, cfg.val_per_class, cfg.val_seed)
    return np.bincount(splits["train"][1], minlength=len(classes))


def load_folder_dataset(root, cfg) -> DataBundle:
    """The folder as a :class:`DataBundle`; with ``data.train_split``/``test_split`` set,
    those lists (paths relative to ``root``) are used instead of the rule."""
    root = Path(root)
    if _has_split_files(cfg):
        return load_split_dataset("folder", root, cfg, image_root=root)
    classes, files = scan_folder(root)
    splits, (cap_test, cap_val) = split_folder(classes, files, cfg.val_per_class, cfg.val_seed)
    if not len(splits["test"][0]):
        raise DataError(f"image folder {root}: too few images for a test split (the median class needs >= 5)")
    size, crop = image_sizes(cfg)
    bad_images = {"policy": cfg.on_bad_image}
    if cfg.on_bad_image == "skip":  # after the split rule, so the split of the good images does not move
        splits, bad_images = drop_bad_images(root, splits, size, cfg.decoder)
        counts = np.bincount(splits["train"][1], minlength=len(classes))
        if (counts == 0).any():
            c = int(np.flatnonzero(counts == 0)[0])
            raise DataError(f"class folder {root / classes[c]} has no readable training images (data.on_bad_image=skip)")
        if not len(splits["test"][0]):
            raise DataError(f"image folder {root}: no readable test images (data.on_bad_image=skip)")

    def image_set(s):
        paths, labels = splits[s]
        if not len(paths) and s == "val":
            return None
        return ImageSet(file_store(root, paths, size, cfg, s), labels, s)

    digest = {s: hashlib.sha256("\n".join(p).encode()).hexdigest() for s, (p, _) in splits.items()}
    return DataBundle(
        name="folder",
        num_classes=len(classes),
        class_names=classes,
        train=image_set("train"),
        val=image_set("val"),
        test=image_set("test"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        image_size=size,
        crop_size=crop,
        source={
            "folder": str(root),
            "split_rule": "per class: test min(T, n//5), val min(V, n//10), rest train",
            "test_cap": cap_test,
            "val_cap": cap_val,
            "seed": cfg.val_seed,
            "sha256": digest,
            "decode": decode_note(size, crop, cfg),
            "bad_images": bad_images,
        },
    )
