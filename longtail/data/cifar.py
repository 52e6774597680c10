"""CIFAR-10/100 from the official python archives, and the LDAM-DRW long-tailed subsets.

The archive is read member by member straight from the ``.tar.gz`` (nothing is
extracted or cached; the 168 MB CIFAR-100 archive takes 2-3 s, mostly gunzip). An already
extracted folder next to it is used first. The pickles are loaded with a
restricted unpickler, so a tampered archive cannot run code.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from . import download as dl

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class CifarSpec:
    url: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple
    std: tuple

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def per_class(self) -> int:
        return 50000 // self.num_classes


SPECS = {
    "cifar10": CifarSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ),
    "cifar100": CifarSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test="test",
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    ),
}


class ChecksumWarning(UserWarning):
    """A local archive's md5 differs from the official one (it is still used)."""


@dataclass
class CifarArrays:
    train_images: np.ndarray  # uint8 (N, 3, 32, 32)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: dict = field(default_factory=dict)  # archive path, its md5, the official md5


# --------------------------------------------------------------------------- safe pickles

# Everything a CIFAR pickle needs: numpy array reconstruction (under its numpy<2 and
# numpy>=2 module names) and, for pickles that Python 3 writes at protocol 2, the
# codecs.encode call that rebuilds bytes objects.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # found this way, numpy.core warns on numpy>=2
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("_codecs", "encode"): codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any failure of a malformed pickle is the archive's fault
        raise DataError(f"{where}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(d: dict, key: str, where: str):
    if key not in d:
        raise DataError(f"{where}: missing key {key!r}")
    return d[key]


def _batch(data: bytes, spec: CifarSpec, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(data, where)
    images = np.asarray(_field(d, "data", where))
    try:
        labels = np.asarray(_field(d, spec.label_key, where), dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {spec.label_key!r} is not a list of integers") from None
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise DataError(f"{where}: expected uint8 data of shape (N, 3072), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{where}: {len(images)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{where}: labels outside 0..{spec.num_classes - 1}")
    return images.reshape(-1, 3, 32, 32), labels


def _names(data: bytes, spec: CifarSpec, where: str) -> list[str]:
    names = _field(_unpickle(data, where), spec.names_key, where)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{where}: expected {spec.num_classes} class names in {spec.names_key!r}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


# --------------------------------------------------------------------------- reading


def _read_archive(path: Path, spec: CifarSpec) -> tuple[dict[str, bytes], str]:
    """The wanted members' bytes, and the archive's md5."""
    wanted = {f"{spec.folder}/{m}" for m in (*spec.train, spec.test, spec.meta)}
    members: dict[str, bytes] = {}
    current = str(path)
    # The md5 runs in a thread while the main thread decompresses (hashlib releases the GIL).
    with ThreadPoolExecutor(1) as pool:
        md5 = pool.submit(dl.md5sum, path)
        try:
            # Stream mode ("r|gz") reads the file once, front to back, never seeking.
            with tarfile.open(path, mode="r|gz") as tar:
                for m in tar:
                    name = m.name.removeprefix("./")
                    if name in wanted and m.isfile():
                        current = f"{path}:{name}"
                        members[name] = tar.extractfile(m).read()
                        if len(members[name]) != m.size:
                            raise EOFError("member is truncated")
                        current = str(path)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"{current}: unreadable, corrupt or truncated archive ({type(e).__name__}: {e})") from None
        md5 = md5.result()
    missing = sorted(wanted - members.keys())
    if missing:
        raise DataError(f"{path}: member {missing[0]} is missing")
    return {name.split("/", 1)[1]: data for name, data in members.items()}, md5


def _read_folder(folder: Path, spec: CifarSpec) -> dict[str, bytes]:
    out = {}
    for m in (*spec.train, spec.test, spec.meta):
        try:
            out[m] = (folder / m).read_bytes()
        except OSError as e:
            raise DataError(f"{folder / m}: cannot read ({e.strerror or e})") from None
    return out


def load_cifar(name: str, root, download: bool = False) -> CifarArrays:
    """Load CIFAR-10 or CIFAR-100 from ``root``: the extracted folder, else the ``.tar.gz``.

    A missing archive is downloaded into ``root`` when ``download`` is set. A local
    archive whose md5 is not the official one only warns (:class:`ChecksumWarning`).
    """
    if name not in SPECS:
        raise ConfigError(f"data.dataset: unknown CIFAR variant {name!r}; choose from {', '.join(SPECS)}")
    spec, root = SPECS[name], Path(root)
    folder, archive = root / spec.folder, root / spec.archive
    if folder.is_dir():
        members, where = _read_folder(folder, spec), folder
        source = {"folder": folder.name}  # the name, not this machine's path: the record travels
    else:
        if download:
            dl.download_once(spec.url, archive, spec.md5)  # under DDP: rank 0 alone, the others wait for it
        elif not archive.is_file():
            raise DataError(
                f"{spec.archive} not found in {root}; download {spec.url} there or enable data.download"
            )
        members, md5 = _read_archive(archive, spec)
        where = archive
        if md5 != spec.md5:
            warnings.warn(
                f"{archive} has md5 {md5}, official {spec.md5}; using it anyway", ChecksumWarning, stacklevel=2
            )
        source = {"archive": archive.name, "md5": md5, "official_md5": spec.md5}  # md5 names the content
    train = [_batch(members[m], spec, f"{where}:{m}") for m in spec.train]
    test_images, test_labels = _batch(members[spec.test], spec, f"{where}:{spec.test}")
    return CifarArrays(
        train_images=np.concatenate([b[0] for b in train]),
        train_labels=np.concatenate([b[1] for b in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=_names(members[spec.meta], spec, f"{where}:{spec.meta}"),
        source=source,
    )


# --------------------------------------------------------------------------- long-tailed subsets


def lt_counts(num_classes: int, max_per_class: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Images kept per class, in LDAM-DRW's exact float form (so totals match the literature).

    ``exp``: ``int(max * imb_factor ** (i / (C - 1.0)))`` with ``imb_factor = 1 / IF``;
    ``step``: the first ``C // 2`` classes keep ``max``, the rest ``int(max * imb_factor)``.
    """
    if not imbalance >= 1:  # also rejects NaN
        raise ConfigError(f"data.imbalance must be >= 1, got {imbalance:g}")
    imb_factor = 1.0 / imbalance
    if profile == "exp":
        if num_classes == 1:
            counts = [int(max_per_class)]
        else:
            counts = [int(max_per_class * (imb_factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    elif profile == "step":
        half = num_classes // 2
        counts = [int(max_per_class)] * half + [int(max_per_class * imb_factor)] * (num_classes - half)
    else:
        raise ConfigError(f"data.profile: {profile!r} is not one of exp, step")
    if min(counts) < 1:
        raise ConfigError(
            f"data.imbalance {imbalance:g} leaves class {counts.index(0)} with no images (max {max_per_class} per class)"
        )
    return counts


def lt_indices(labels, counts, seed: int = 0) -> np.ndarray:
    """Indices of the long-tailed subset, concatenated in class order.

    One ``RandomState(seed)`` shuffles each class's indices in turn, the same stream
    as LDAM-DRW's ``np.random.seed(seed)`` + ``np.random.shuffle`` without touching
    numpy's global state.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    out = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        if len(idx) < n:
            raise DataError(f"class {c} has {len(idx)} training images, fewer than the {n} the subset needs")
        rng.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def balanced_val_indices(labels, exclude, per_class: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """``per_class`` images per class drawn from the training images outside ``exclude``.

    Disjoint from ``exclude`` (the long-tailed subset) by construction, deterministic
    in ``seed``, in class order. A class with fewer spare images gives what it has,
    possibly none: CIFAR-10-LT at IF=1 uses every training image, so its
    validation split is empty.
    """
    labels = np.asarray(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    spare = np.ones(len(labels), bool)
    spare[np.asarray(exclude, dtype=np.int64)] = False
    rng = np.random.RandomState(seed)
    out = []
    for c in range(num_classes):
        idx = np.where((labels == c) & spare)[0]
        rng.shuffle(idx)
        out.append(idx[:per_class])
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def cifar_lt_stats(dataset: str, imbalance: float, profile: str = "exp") -> list[int]:
    """Per-class training counts of ``cifar10-lt`` / ``cifar100-lt``, without the images."""
    name = dataset.removesuffix("-lt")
    if name not in SPECS:
        raise ConfigError(f"data.dataset: {dataset!r} is not cifar10-lt or cifar100-lt")
    spec = SPECS[name]
    return lt_counts(spec.num_classes, spec.per_class, imbalance, profile)


def index_sha256(indices) -> str:
    """Fingerprint of an index list (little-endian int64), to compare splits across machines."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()
