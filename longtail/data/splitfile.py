"""Split-file datasets: ImageNet-LT, Places-LT, iNaturalist 2017/2018 (the OLTR convention).

A split file lists ``<relative image path> <class index>`` per line (paths
cannot contain spaces). Images are decoded by :class:`FileStore` to a fixed
``S x S`` (shorter side resized to S, then a centre crop): S defaults to 256,
so the random-resized crop to 224 and the 224 centre crop of evaluation are
done later, on the device, on uniform uint8 batches.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .download import user_cache_dir
from .images import DataBundle, ImageSet

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SIZE = 256


@dataclass(frozen=True)
class Layout:
    folder: str  # folder under the data root holding the lists; also the default image root
    train: str
    val: str | None
    test: str


# iNaturalist has no public test labels: the literature reports on the official val split,
# so that is the test split here, and there is no validation split unless data.val_split
# names one (selecting epochs on it would be selecting on the test set).
LAYOUTS = {
    "imagenet-lt": Layout("ImageNet_LT", "ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"),
    "places-lt": Layout("Places_LT", "Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"),
    "inat2018": Layout("iNaturalist18", "iNaturalist18_train.txt", None, "iNaturalist18_val.txt"),
    "inat2017": Layout("iNaturalist17", "iNaturalist17_train.txt", None, "iNaturalist17_val.txt"),
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


def drop_bad_images(image_root: Path, lists: dict, size: int) -> tuple[dict, dict]:
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
                    decode_image(image_root / rel, size)
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

    size = cfg.image_size or DEFAULT_SIZE
    bad_images = {"policy": cfg.on_bad_image}
    if cfg.on_bad_image == "skip":
        lists, bad_images = drop_bad_images(image_root, lists, size)
        for s, (paths, _) in lists.items():
            if not paths:
                raise DataError(f"{files[s]}: no readable images (data.on_bad_image=skip dropped all {bad_images['skipped'][s]})")
        _check_classes(lists["train"][1], num_classes, files["train"])
    cache_dir = user_cache_dir() / "decoded" if cfg.cache else None

    def split(s):
        if s not in lists:
            return None
        paths, labels = lists[s]
        return ImageSet(FileStore(image_root, paths, size, cache_dir), labels, s)

    return DataBundle(
        name=name,
        num_classes=num_classes,
        class_names=_class_names(*lists["train"], num_classes),
        train=split("train"),
        val=split("val"),
        test=split("test"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        image_size=size,
        source={
            "splits": {s: str(p) for s, p in files.items() if p is not None},
            "sha256": {s: _sha256(p) for s, p in files.items() if p is not None},
            "image_root": str(image_root),
            "decode": f"shorter side to {size}, centre crop {size}x{size}",
            "bad_images": bad_images,
        },
    )


# --------------------------------------------------------------------------- decoding


def decode_image(path: Path, size: int) -> np.ndarray:
    """uint8 ``(3, size, size)``: RGB, shorter side resized to ``size``, centre crop."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still >= size
            im = im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"image {path} cannot be decoded ({type(e).__name__}: {e})") from None
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


class DecodedCache:
    """Decoded images of one split in a uint8 memmap ``(N, 3, S, S)`` plus a JSON sidecar.

    The sidecar holds the split hash, S and the mask of filled rows. The mask is
    written (tmp file, then rename) only after the memmap is flushed, so a row
    marked filled is always complete; a crash only loses fills. Several
    processes may share a cache: they write identical bytes, and each merges
    its mask into the one on disk. The key does not cover file contents: delete
    the cache after changing images in place.
    """

    FLUSH_EVERY_S = 30.0

    def __init__(self, directory: Path, key: str, count: int, size: int):
        self.data_path, self.meta_path = directory / f"{key}.u8", directory / f"{key}.json"
        self.key, self.size = key, size
        shape = (count, 3, size, size)
        directory.mkdir(parents=True, exist_ok=True)
        nbytes = int(np.prod(shape))
        if self.data_path.exists() and self.data_path.stat().st_size != nbytes:
            self.data_path.unlink()
        try:  # exclusive create: another process may be filling an existing file
            fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.ftruncate(fd, nbytes)
            os.close(fd)
        except FileExistsError:
            pass
        self.data = np.memmap(self.data_path, dtype=np.uint8, mode="r+", shape=shape)
        self.filled = self._disk_mask()
        self._lock = threading.Lock()
        self._dirty = False
        self._last_flush = time.monotonic()

    def _disk_mask(self) -> np.ndarray:
        n = len(self.data)
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta.get("split_hash") == self.key and meta.get("size") == self.size and meta.get("count") == n:
                bits = np.frombuffer(base64.b64decode(meta["filled"]), dtype=np.uint8)
                return np.unpackbits(bits, count=n).astype(bool)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or unreadable sidecar: nothing counts as filled
        return np.zeros(n, dtype=bool)

    def get(self, i: int) -> np.ndarray | None:
        return np.array(self.data[i]) if self.filled[i] else None

    def put(self, i: int, image: np.ndarray) -> None:
        self.data[i] = image
        with self._lock:
            self.filled[i] = True
            self._dirty = True

    def maybe_flush(self) -> None:
        if self._dirty and (self.filled.all() or time.monotonic() - self._last_flush > self.FLUSH_EVERY_S):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self.data.flush()
            mask = self.filled | self._disk_mask()
            meta = {
                "split_hash": self.key,
                "size": self.size,
                "count": len(self.data),
                "filled": base64.b64encode(np.packbits(mask).tobytes()).decode(),
            }
            tmp = self.meta_path.with_name(f"{self.meta_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, self.meta_path)
            self.filled = mask
            self._dirty = False
            self._last_flush = time.monotonic()


class FileStore:
    """Images decoded from files on demand (an :class:`~longtail.data.images.ImageStore`).

    A batch is decoded by a small thread pool (PIL releases the GIL while
    decoding). With ``cache_dir`` the decoded images are kept in a
    :class:`DecodedCache`, so later epochs and runs skip JPEG decoding.
    """

    def __init__(self, root, rel_paths: list[str], size: int = DEFAULT_SIZE, cache_dir=None, threads: int = 0):
        self.root, self.rel_paths, self.size = Path(root), list(rel_paths), int(size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._pool = self._cache = None

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getstate__(self):  # threads and memmaps do not travel to other processes
        return {**self.__dict__, "_pool": None, "_cache": None}

    def cache_key(self) -> str:
        blob = json.dumps([str(self.root.resolve()), self.size, self.rel_paths]).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def _cached(self) -> DecodedCache | None:
        if self.cache_dir and self._cache is None and len(self):
            self._cache = DecodedCache(self.cache_dir, self.cache_key(), len(self), self.size)
            weakref.finalize(self, self._cache.flush)
        return self._cache

    def _one(self, i: int) -> np.ndarray:
        cache = self._cache
        image = cache.get(i) if cache else None
        if image is None:
            image = decode_image(self.root / self.rel_paths[i], self.size)
            if cache:
                cache.put(i, image)
        return image

    def load(self, index) -> torch.Tensor:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        cache = self._cached()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        images = list(self._pool.map(self._one, index.tolist()))
        if cache:
            cache.maybe_flush()
        if not images:
            return torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(images))

    def flush(self) -> None:
        """Write the cache's fill mask now (it is also written every 30 s and at exit)."""
        if self._cache:
            self._cache.flush()
