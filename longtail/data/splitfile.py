"""Split-file datasets: ImageNet-LT, Places-LT, iNaturalist 2017/2018 (the OLTR convention).

A split file lists ``<relative image path> <class index>`` per line (paths
cannot contain spaces). Images are decoded by :class:`~longtail.data.filestore.FileStore`
with the shorter side at ``data.image_size`` (256) and the aspect ratio kept; the
stage's first augmentation op then takes the papers' crop of ``data.crop_size``
(224) from the whole image: a random resized crop for training, the shorter side
to 256 and a centre crop for evaluation.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..errors import ConfigError, DataError
from .decode import decode_image, pick_decoder
from .download import user_cache_dir
from .filestore import FileStore
from .images import DataBundle, ImageSet

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)  # Decoupling's data/dataloader.py (iNat18; used for iNat17 too)
DEFAULT_SIZE = 256  # stored shorter side: Resize(256) of evaluation, and room for 224 crops
DEFAULT_CROP = 224


def image_sizes(cfg) -> tuple[int, int]:
    """``(stored shorter side, model input side)``. Unset, they are 256 and 224; with only ``data.crop_size``
    set, the stored side is the evaluation resize, ``round(crop / 0.875)``; with only ``image_size``, the
    crop is 224 or the stored side if that is smaller."""
    size = cfg.image_size or (int(round(cfg.crop_size / 0.875)) if cfg.crop_size else DEFAULT_SIZE)
    crop = cfg.crop_size or min(DEFAULT_CROP, size)
    if crop > size:
        raise ConfigError(f"data.crop_size={crop} is larger than data.image_size={size}, the stored shorter side")
    return size, crop


def file_store(root: Path, paths: list[str], size: int, cfg, split: str) -> FileStore:
    """The :class:`FileStore` of one split, with the cache and decoder that ``data`` asks for.

    Evaluation splits are stored as centre squares: their transform reads nothing outside them.
    """
    cache_dir = (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else user_cache_dir() / "images") if cfg.cache else None
    return FileStore(root, paths, size, cache_dir, decoder=cfg.decoder, quality=cfg.cache_quality, square=split != "train",
                     decode_device=cfg.decode_device)


def decode_note(size: int, crop: int, cfg) -> str:
    cache = f", cached as JPEG q{cfg.cache_quality}" if cfg.cache else ""
    return (f"shorter side to {size}, aspect kept (val/test: the centre {size}x{size}; {pick_decoder(cfg.decoder)}{cache}); "
            f"crops of {crop} by the stage's augmentation")


@dataclass(frozen=True)
class Layout:
    folder: str  # folder under the data root holding the lists; also the default image root
    train: str
    val: str | None
    test: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# iNaturalist has no public test labels: the literature reports on the official val split,
# so that is the test split here, and there is no validation split unless data.val_split
# names one (selecting epochs on it would be selecting on the test set).
LAYOUTS = {
    "imagenet-lt": Layout("ImageNet_LT", "ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"),
    "places-lt": Layout("Places_LT", "Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"),
    "inat2018": Layout("iNaturalist18", "iNaturalist18_train.txt", None, "iNaturalist18_val.txt", INAT_MEAN, INAT_STD),
    "inat2017": Layout("iNaturalist17", "iNaturalist17_train.txt", None, "iNaturalist17_val.txt", INAT_MEAN, INAT_STD),
}


# --------------------------------------------------------------------------- split files


def read_split(path) -> tuple[list[str], np.ndarray]:
    """``(relative paths, int64 labels)`` of a split file; blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"split file {path}: cannot read ({e})") from None
    paths: list[str] = []
    labels: list[int] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise DataError(f"{path}:{lineno}: expected '<relative path> <label>', got {line!r}")
        rel = fields[0]
        if _escapes(rel):
            raise DataError(f"{path}:{lineno}: image path {rel!r} escapes the image root (absolute or '..'); "
                            f"paths must be relative to it")
        label = int(fields[1])
        if label > MAX_LABEL:
            raise DataError(f"{path}:{lineno}: label {fields[1]} is out of range (at most {MAX_LABEL})")
        if rel in first_line:
            raise DataError(f"{path}:{lineno}: duplicate image {rel!r} (also on line {first_line[rel]})")
        first_line[rel] = lineno
        paths.append(rel)
        labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


MAX_LABEL = 10_000_000  # class indices beyond this are typos, not datasets (and would allocate GBs of counts)


def _escapes(rel: str) -> bool:
    """A split path that could leave the image root: absolute (POSIX or Windows, drive included) or with a '..' part."""
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive or rel.startswith("\\"):
        return True
    return ".." in rel.replace("\\", "/").split("/")


def _under(root: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def split_files(name: str, root, cfg) -> dict[str, Path | None]:
    """The train/val/test list files: ``data.*_split`` if set, else the dataset's default names.

    Relative paths are taken under ``root``. Default lists are looked for in
    ``root/<folder>/`` and then ``root/splits/<folder>/``.
    """
    root, layout = Path(root), LAYOUTS.get(name)
    out: dict[str, Path | None] = {}
    for split in ("train", "val", "test"):
        override = getattr(cfg, f"{split}_split")
        default = getattr(layout, split) if layout else None
        if override:
            out[split] = _under(root, override)
        elif default:
            tries = [root / layout.folder / default, root / "splits" / layout.folder / default]
            found = [p for p in tries if p.is_file()]
            if not found:
                raise DataError(f"{name}: split file {default} not found in {tries[0].parent} or {tries[1].parent} (set data.{split}_split)")
            out[split] = found[0]
        elif split != "val":
            raise ConfigError(f"data.{split}_split must name a split file for dataset {name!r}")
        else:
            out[split] = None
    return out


def _check_classes(labels: np.ndarray, num_classes: int, where: Path) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        more = f" (and {empty.size - 1} more)" if empty.size > 1 else ""
        raise DataError(f"{where}: class {empty[0]} has no training images{more}")
    return counts


def split_train_counts(name: str, root, cfg) -> np.ndarray:
    """Training images per class, from the train list alone (no images are opened)."""
    train = split_files(name, root, cfg)["train"]
    _, labels = read_split(train)
    if not labels.size:
        raise DataError(f"{train}: no images listed")
    return _check_classes(labels, int(labels.max()) + 1, train)


def _class_names(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """The parent folder of each class's first training image, if those are distinct; else the index."""
    first = {}
    for p, y in zip(paths, labels.tolist()):
        first.setdefault(y, PurePosixPath(p).parent.name)
    names = [first.get(c, "") for c in range(num_classes)]
    return names if all(names) and len(set(names)) == num_classes else [str(c) for c in range(num_classes)]


def drop_bad_images(image_root: Path, lists: dict, size: int, decoder: str = "auto") -> tuple[dict, dict]:
    """``data.on_bad_image: skip``: decode every listed image once and drop those that fail.

    Returns the filtered ``{split: (paths, labels)}`` and a report for provenance:
    per split the number skipped, and the first few reasons. A warning gives the count.
    """
    image_root = Path(image_root)
    skipped: dict[str, int] = {}
    examples: list[str] = []
    out = {}
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="verify") as pool:
        for s, (paths, labels) in lists.items():
            def check(rel):
                try:
                    decode_image(image_root / rel, size, decoder)
                    return None
                except DataError as e:
                    return str(e)
            errors = list(pool.map(check, paths))
            keep = [i for i, e in enumerate(errors) if e is None]
            skipped[s] = len(paths) - len(keep)
            examples += [e for e in errors if e is not None][: max(0, 5 - len(examples))]
            out[s] = ([paths[i] for i in keep], np.asarray(labels)[keep])
    total = sum(skipped.values())
    if total:
        per = ", ".join(f"{n} in {s}" for s, n in skipped.items() if n)
        warnings.warn(f"data.on_bad_image=skip: skipped {total} unreadable image(s) under {image_root} ({per}); first: {examples[0]}",
                      stacklevel=2)
    return out, {"policy": "skip", "skipped": skipped, "skipped_total": total, "examples": examples}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_split_dataset(name: str, root, cfg, image_root=None) -> DataBundle:
    """A :class:`DataBundle` of file-backed splits from the dataset's list files.

    The images are under ``data.image_root`` (relative to ``root``), by default
    ``root/<folder>`` (``ImageNet_LT``, ``Places_LT``, ``iNaturalist18``...), where
    the list paths (``train/n01440764/...``) must resolve; an ``image_root``
    argument takes precedence over both.
    """
    root = Path(root)
    files = split_files(name, root, cfg)
    lists = {s: read_split(p) for s, p in files.items() if p is not None}
    layout = LAYOUTS.get(name)
    if image_root is not None:
        image_root = Path(image_root)
    elif cfg.image_root:
        image_root = _under(root, cfg.image_root)
    else:
        image_root = root / layout.folder if layout else root
    if not image_root.is_dir():
        raise DataError(f"image root {image_root} does not exist (set data.image_root)")
    for s, (paths, _) in lists.items():
        if not paths:
            raise DataError(f"{files[s]}: no images listed")
    num_classes = max(int(labels.max()) for _, labels in lists.values()) + 1
    _check_classes(lists["train"][1], num_classes, files["train"])

    size, crop = image_sizes(cfg)
    bad_images = {"policy": cfg.on_bad_image}
    if cfg.on_bad_image == "skip":
        lists, bad_images = drop_bad_images(image_root, lists, size, cfg.decoder)
        for s, (paths, _) in lists.items():
            if not paths:
                raise DataError(f"{files[s]}: no readable images (data.on_bad_image=skip dropped all {bad_images['skipped'][s]})")
        _check_classes(lists["train"][1], num_classes, files["train"])

    def split(s):
        if s not in lists:
            return None
        paths, labels = lists[s]
        return ImageSet(file_store(image_root, paths, size, cfg, s), labels, s)

    return DataBundle(
        name=name,
        num_classes=num_classes,
        class_names=_class_names(*lists["train"], num_classes),
        train=split("train"),
        val=split("val"),
        test=split("test"),
        mean=layout.mean if layout else IMAGENET_MEAN,
        std=layout.std if layout else IMAGENET_STD,
        image_size=size,
        crop_size=crop,
        source={
            "splits": {s: str(p) for s, p in files.items() if p is not None},
            "sha256": {s: _sha256(p) for s, p in files.items() if p is not None},
            "image_root": str(image_root),
            "decode": decode_note(size, crop, cfg),
            "bad_images": bad_images,
        },
    )
