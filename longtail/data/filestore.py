"""File-backed images: decoded on demand, optionally from a compact JPEG cache built once.

The cache holds every image of a split once, re-encoded as baseline JPEG (quality 85, 4:2:0: the
fastest format to decode that we measured; WebP is 20 % smaller at equal error but decodes 5x
slower) with the shorter side at the decode size (256 by default, enough for 224 crops) and the
aspect ratio kept; evaluation splits keep only their centre square (:func:`centre_square`). That
is 20-35 KB an image, against 196 KB for a raw 256 x 256 square. It is written in shards; a
shard counts only once its index file is renamed into place, and the cache is used only once its
manifest is, so a killed or failed build resumes at its first missing shard and a half-written
cache is never read. One process builds while the others wait on a file lock; temporary names
carry the process id, so two builders can never remove each other's files.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..progress import ProgressBar
from .augment.perimage import ImageList
from .decode import decode_bytes, decode_image, decode_jpegs_gpu, encode_jpeg, gpu_decoder_available, pick_decoder

SHARD = 1024  # images per shard: the unit a build resumes at
FORMAT = 1


def centre_square(a: np.ndarray) -> np.ndarray:
    """The centre ``s x s`` of an image whose shorter side is ``s``, offsets rounded as the centre crop rounds them.

    Evaluation splits are stored so: their transform (shorter side to 256, centre crop 224) reads only this
    square, so the result is the same to the pixel and the cache a quarter smaller.
    """
    h, w = a.shape[:2]
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return a[top:top + s, left:left + s]


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` for the block (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: the pid-named temporaries still keep builders apart
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class JpegCache:
    """The re-encoded images of one list of files, in ``directory/<key>/``."""

    def __init__(self, directory: Path, key: str, files: list[Path], load, size: int, quality: int = 85,
                 decoder: str = "auto", threads: int = 0, square: bool = False):
        """``load(path)`` gives the image to store (the store's own decode); ``decoder`` and ``square`` are recorded."""
        self.dir, self.key, self.files, self.size, self.quality = Path(directory) / key, key, files, size, quality
        self.load, self.decoder, self.threads, self.square = load, decoder, threads or (os.cpu_count() or 1), square
        self._offsets = self._data = None

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def _shard(self, k: int) -> tuple[Path, Path]:
        return self.dir / f"shard-{k:05d}.bin", self.dir / f"shard-{k:05d}.idx.npy"

    def _expected(self) -> dict:
        return {"format": FORMAT, "count": len(self.files), "size": self.size, "quality": self.quality, "shard": SHARD,
                "square": self.square}

    def complete(self) -> bool:
        try:
            meta = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return False
        return all(meta.get(k) == v for k, v in self._expected().items())

    def _shard_done(self, k: int) -> bool:
        bin_path, idx_path = self._shard(k)
        try:
            return bin_path.stat().st_size == int(np.load(idx_path)[-1])
        except (OSError, ValueError, IndexError):
            return False

    def build(self, progress: bool = True) -> None:
        """Write the missing shards, then the manifest; safe to run from several processes at once."""
        if self.complete():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir.parent / f"{self.key}.lock"):
            if self.complete():  # another process built it while this one waited
                return
            n_shards = -(-len(self.files) // SHARD)
            todo = [k for k in range(n_shards) if not self._shard_done(k)]
            remaining = sum(min(SHARD, len(self.files) - k * SHARD) for k in todo)
            bar = ProgressBar(len(self.files), f"[cache {self.dir.name[:8]}]", start=len(self.files) - remaining, enabled=progress)
            per_image = 64 * 1024  # a safe guess until the first shard is measured
            with ThreadPoolExecutor(self.threads, thread_name_prefix="cache") as pool:
                for k in todo:
                    lo, hi = k * SHARD, min(len(self.files), (k + 1) * SHARD)
                    self._check_space(per_image * (hi - lo) * 2, per_image * remaining)
                    blobs = list(pool.map(self._encode, self.files[lo:hi]))
                    self._write_shard(k, blobs, per_image * remaining)
                    per_image = max(per_image // 4, sum(map(len, blobs)) // len(blobs))
                    remaining -= hi - lo
                    bar.update(hi - lo)
            bar.close()
            meta = {**self._expected(), "bytes": sum(self._shard(k)[0].stat().st_size for k in range(n_shards)),
                    "decoder": pick_decoder(self.decoder), "first": str(self.files[0]) if self.files else None}
            tmp = self.manifest_path.with_name(f"manifest.json.{os.getpid()}.tmp")
            self._guarded(lambda: (_write(tmp, json.dumps(meta).encode()), os.replace(tmp, self.manifest_path)), [tmp], 0)

    def _encode(self, path: Path) -> bytes:
        return encode_jpeg(self.load(path), self.quality)

    def _check_space(self, need_now: int, need_total: int) -> None:
        free = free_bytes(self.dir)
        if free < need_now:
            self._disk_full(free, need_total)

    def _disk_full(self, free: int, need_total: int):
        raise DataError(f"image cache {self.dir}: the disk is full ({free / 1e9:.2f} GB free, about "
                        f"{need_total / 1e9:.2f} GB still to write); free space or set data.cache_dir to another disk "
                        f"(finished shards are kept, and the build resumes from them)")

    def _guarded(self, write, temps: list[Path], need_total: int) -> None:
        try:
            write()
        except OSError as e:
            for t in temps:
                t.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_full(free_bytes(self.dir), need_total)
            raise DataError(f"image cache {self.dir}: cannot write ({e.strerror or e})") from None

    def _write_shard(self, k: int, blobs: list[bytes], need_total: int) -> None:
        bin_path, idx_path = self._shard(k)
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
        tmp_bin = bin_path.with_name(f"{bin_path.name}.{os.getpid()}.tmp")
        tmp_idx = idx_path.with_name(f"{idx_path.stem}.{os.getpid()}.tmp.npy")

        def write():
            _write(tmp_bin, b"".join(blobs))
            np.save(tmp_idx, offsets)
            os.replace(tmp_bin, bin_path)
            os.replace(tmp_idx, idx_path)  # last: the shard counts from here on

        self._guarded(write, [tmp_bin, tmp_idx], need_total)

    def _open(self) -> None:
        n_shards = -(-len(self.files) // SHARD)
        offsets, data = [], []  # built aside: other decode threads may read while this one opens
        for k in range(n_shards):
            bin_path, idx_path = self._shard(k)
            offsets.append(np.load(idx_path))
            data.append(np.memmap(bin_path, dtype=np.uint8, mode="r") if offsets[-1][-1] else np.zeros(0, np.uint8))
        self._data, self._offsets = data, offsets

    def get(self, i: int) -> bytes:
        if self._offsets is None:
            self._open()
        k, j = divmod(i, SHARD)
        o, data = self._offsets[k], self._data[k]
        return data[o[j]:o[j + 1]].tobytes()

    def __getstate__(self):
        return {**self.__dict__, "_offsets": None, "_data": None}


class FileStore:
    """Images decoded from files on demand (an :class:`~longtail.data.images.ImageStore`).

    ``load`` returns an :class:`ImageList` of RGB arrays, shorter side ``size``, aspect kept; the
    stage's first augmentation op crops them (see ``longtail.data.augment.perimage``). A batch is
    decoded by a thread pool (the decoders release the GIL). With ``cache_dir``, the first load
    builds a :class:`JpegCache` (a progress bar on stderr) and every later one reads from it.
    """

    def __init__(self, root, rel_paths: list[str], size: int = 256, cache_dir=None, threads: int = 0,
                 decoder: str = "auto", quality: int = 85, square: bool = False, decode_device: str = "auto"):
        self.root, self.rel_paths, self.size = Path(root), list(rel_paths), int(size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.threads = threads or min(16, os.cpu_count() or 1)
        self.decoder, self.quality, self.square, self.decode_device = decoder, quality, square, decode_device
        self._pool = self._cache = self.gpu = None
        self._gpu_failed = False  # set when a device decode failed: every later use_device keeps the CPU

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getstate__(self):  # threads and memmaps do not travel to other processes
        return {**self.__dict__, "_pool": None, "_cache": None}

    def use_device(self, device) -> None:
        """Decode cached images on ``device`` where torchvision's nvJPEG works there (``data.decode_device``:
        auto = where it works, cpu = never, cuda = always, else an error). The crops then run there too."""
        self.gpu = None
        if self.decode_device == "cpu" or device.type != "cuda" or self._gpu_failed:  # a failure is for good
            return
        if self.cache_dir and gpu_decoder_available(str(device)):
            self.gpu = device
        elif self.decode_device == "cuda":
            raise ConfigError(f"data.decode_device=cuda: decoding on {device} needs data.cache and torchvision with "
                              f"nvJPEG; set data.decode_device=auto to decode on the CPU instead")

    def cache_key(self) -> str:
        blob = json.dumps([str(self.root.resolve()), self.size, self.quality, self.square, self.rel_paths]).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def cache(self) -> JpegCache | None:
        if self.cache_dir and self._cache is None and len(self):
            self._cache = JpegCache(self.cache_dir, self.cache_key(), [self.root / p for p in self.rel_paths], self._decode,
                                    self.size, self.quality, self.decoder, self.threads, self.square)
        return self._cache

    def build_cache(self, progress: bool = True) -> JpegCache | None:
        cache = self.cache()
        if cache is not None:
            cache.build(progress)
        return cache

    def _decode(self, path: Path) -> np.ndarray:
        """The file at ``path`` as this store holds it: shorter side ``size``, upright, centre square if ``square``."""
        a = decode_image(path, self.size, self.decoder)
        return centre_square(a) if self.square else a

    def _one(self, i: int) -> np.ndarray:
        if self._cache is not None:  # stored upright, without EXIF: no orientation to read
            return decode_bytes(self._cache.get(i), self.size, self.decoder, f"{self.root / self.rel_paths[i]} (cached)",
                                orient=False)
        return self._decode(self.root / self.rel_paths[i])

    def load(self, index) -> ImageList:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if self.cache_dir and self._cache is None:
            self.build_cache()
        if self._pool is None:
            # No shutdown hook: the ImageLists handed out keep using the pool; its idle threads exit with it.
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        if self.gpu is not None and self._cache is not None:
            try:
                return ImageList(decode_jpegs_gpu(list(self._pool.map(self._cache.get, index.tolist())), self.gpu), self.gpu)
            except Exception as e:  # the CPU decodes the same bytes to the same sizes
                warnings.warn(f"decoding on {self.gpu} failed ({type(e).__name__}: {e}); decoding on the CPU from now on")
                self.gpu, self._gpu_failed = None, True
        return ImageList(list(self._pool.map(self._one, index.tolist())), map=self._pool.map)


def build_caches(bundle, progress: bool = True) -> dict[str, dict]:
    """Build the JPEG cache of every file-backed split of ``bundle`` (those with ``data.cache`` on);
    ``{split: manifest}``. Training runs this on rank 0 before any stage, the others wait."""
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(bundle, name)
        store = getattr(split, "store", None)
        if isinstance(store, FileStore) and (cache := store.build_cache(progress)) is not None:
            out[name] = {**json.loads(cache.manifest_path.read_text()), "dir": str(cache.dir)}
    return out
