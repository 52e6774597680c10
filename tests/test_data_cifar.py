"""CIFAR readers, LDAM-DRW long-tailed subsets, downloads and the CIFAR side of build."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.config import DataConfig
from longtail.data import build, cifar, download
from longtail.data.cifar import (
    ChecksumWarning,
    balanced_val_indices,
    cifar_lt_stats,
    load_cifar,
    lt_counts,
    lt_indices,
)
from longtail.data.groups import group_accuracy, group_sizes, shot_groups
from longtail.errors import ConfigError, DataError

# --------------------------------------------------------------------------- small archives in the official layout


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, 3072)).astype(np.uint8)


def small_members(name: str, per_class: int = 10, test_per_class: int = 2) -> dict[str, bytes]:
    """Official member names and pickles (bytes keys, protocol 2) of a tiny CIFAR."""
    spec = cifar.SPECS[name]
    C = spec.num_classes
    labels = np.tile(np.arange(C), per_class)
    test_labels = np.tile(np.arange(C), test_per_class)
    key = spec.label_key.encode()
    members = {}
    if name == "cifar10":
        for b, part in enumerate(np.array_split(np.arange(len(labels)), 5)):
            members[f"data_batch_{b + 1}"] = {b"data": _images(len(part), b), key: labels[part].tolist()}
        members["test_batch"] = {b"data": _images(len(test_labels), 9), key: test_labels.tolist()}
        members["batches.meta"] = {b"label_names": [f"class{c}".encode() for c in range(C)]}
    else:
        members["train"] = {b"data": _images(len(labels), 0), key: labels.tolist()}
        members["test"] = {b"data": _images(len(test_labels), 9), key: test_labels.tolist()}
        members["meta"] = {b"fine_label_names": [f"class{c}".encode() for c in range(C)]}
    return {f"{spec.folder}/{m}": _pickle(d) for m, d in members.items()}


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def small_archive(root: Path, name: str, **kw) -> Path:
    return write_tar(root / cifar.SPECS[name].archive, small_members(name, **kw))


def load_quiet(name, root, download=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChecksumWarning)
        return load_cifar(name, root, download)


def ldam_indices(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """LDAM-DRW's IMBALANCECIFAR selection, with numpy's global RNG as in their code."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        out = []
        for c, n in zip(np.unique(labels), counts):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            out.append(idx[:n])
        return np.concatenate(out)
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------- counts and groups


@pytest.mark.parametrize(
    "dataset, imbalance, total, groups",
    [
        ("cifar100-lt", 100, 10847, (35, 35, 30)),
        ("cifar100-lt", 50, 12608, (41, 41, 18)),
        ("cifar100-lt", 10, 19573, (69, 31, 0)),
        ("cifar10-lt", 100, 12406, None),
    ],
)
def test_lt_totals_and_groups(dataset, imbalance, total, groups):
    counts = cifar_lt_stats(dataset, imbalance, "exp")
    assert sum(counts) == total
    assert counts == sorted(counts, reverse=True)
    if groups:
        sizes = group_sizes(counts)
        assert (sizes["many"], sizes["medium"], sizes["few"]) == groups
    stats = build.dataset_stats(DataConfig(dataset=dataset, imbalance=imbalance))  # needs no archive
    assert stats["num_train"] == total and stats["counts"] == counts
    assert stats["num_classes"] == len(counts) and stats["imbalance"] == imbalance
    if groups:
        assert tuple(stats["groups"].values()) == groups


def test_few_group_empty_at_if10_gives_none():
    counts = cifar_lt_stats("cifar100-lt", 10)
    groups = shot_groups(counts)
    acc = group_accuracy(np.full(100, 0.5), groups)
    assert acc["few"] is None and acc["many"] == 0.5 and acc["medium"] == 0.5


def test_lt_counts_match_ldam_float_form():
    for C, img_max in ((100, 500), (10, 5000)):
        for IF in (100, 50, 20, 10, 200, 7.5):
            imb_factor = 1.0 / IF
            ldam = [int(img_max * (imb_factor ** (i / (C - 1.0)))) for i in range(C)]
            assert lt_counts(C, img_max, IF) == ldam
    assert lt_counts(100, 500, 100)[0] == 500 and lt_counts(100, 500, 100)[-1] == 5


def test_lt_counts_balanced_step_and_errors():
    assert lt_counts(100, 500, 1) == [500] * 100
    assert cifar_lt_stats("cifar10-lt", 1) == [5000] * 10
    assert lt_counts(10, 5000, 100, "step") == [5000] * 5 + [50] * 5
    with pytest.raises(ConfigError, match=r"^data.imbalance must be >= 1, got 0.5$"):
        lt_counts(100, 500, 0.5)
    with pytest.raises(ConfigError, match="data.imbalance"):
        lt_counts(100, 500, float("nan"))
    with pytest.raises(ConfigError, match="data.profile"):
        lt_counts(100, 500, 10, "linear")
    with pytest.raises(ConfigError, match="data.imbalance 1000 leaves class 90 with no images"):
        lt_counts(100, 500, 1000)


def test_lt_indices_equal_global_seed_procedure():
    labels = np.random.RandomState(3).randint(0, 10, 2000)
    counts = [min(np.sum(labels == c), 200 - 15 * c) for c in range(10)]
    before = np.random.get_state()[1].copy()
    ours = lt_indices(labels, counts, seed=0)
    assert np.array_equal(np.random.get_state()[1], before)  # global RNG untouched
    assert np.array_equal(ours, ldam_indices(labels, counts, 0))
    assert np.array_equal(np.bincount(labels[ours], minlength=10), counts)
    assert not np.array_equal(ours, lt_indices(labels, counts, seed=1))
    with pytest.raises(DataError, match="class 0 has"):
        lt_indices(labels, [10_000] + counts[1:])


def test_balanced_val_indices():
    labels = np.repeat(np.arange(4), 30)
    lt = lt_indices(labels, [30, 20, 10, 28])
    val = balanced_val_indices(labels, lt, per_class=5, seed=0)
    assert not set(val) & set(lt)
    assert np.bincount(labels[val], minlength=4).tolist() == [0, 5, 5, 2]  # class 3 has only 2 spare
    assert np.array_equal(val, balanced_val_indices(labels, lt, per_class=5, seed=0))
    assert not np.array_equal(val, balanced_val_indices(labels, lt, per_class=5, seed=1))
    assert balanced_val_indices(labels, np.arange(len(labels)), 5, 0).size == 0


# --------------------------------------------------------------------------- the real CIFAR-100 archive


def test_real_cifar100_archive(real_cifar100):
    arrays, caught = real_cifar100
    assert arrays.train_images.shape == (50000, 3, 32, 32) and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == (10000, 3, 32, 32)
    assert arrays.train_labels.dtype == np.int64
    assert arrays.train_labels[:20].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31, 39, 96, 82, 17, 71, 39, 8, 97, 80, 71]
    assert np.bincount(arrays.test_labels).tolist() == [100] * 100
    assert arrays.class_names[:3] == ["apple", "aquarium_fish", "baby"] and arrays.class_names[-1] == "worm"
    checksum = [w for w in caught if issubclass(w.category, ChecksumWarning)]
    if arrays.source["md5"] != cifar.SPECS["cifar100"].md5:  # the shared copy differs on purpose
        assert len(checksum) == 1
        message = str(checksum[0].message)
        assert "cifar-100-python.tar.gz" in message and arrays.source["md5"] in message
        assert cifar.SPECS["cifar100"].md5 in message and "\n" not in message
    else:
        assert not checksum


def test_real_cifar100_lt_bundle(real_cifar100):
    arrays, _ = real_cifar100
    cfg = DataConfig(dataset="cifar100-lt", imbalance=100, val_per_class=20, val_seed=0)
    bundle = build.cifar_bundle(cfg, arrays)
    counts = lt_counts(100, 500, 100)
    ldam = ldam_indices(arrays.train_labels, counts, 0)
    assert len(bundle.train) == 10847 and bundle.train_counts.tolist() == counts
    assert bundle.source["train_indices_sha256"] == cifar.index_sha256(ldam)
    ours = lt_indices(arrays.train_labels, counts, 0)
    assert np.array_equal(ours, ldam)
    assert torch.equal(bundle.train.store.images, torch.from_numpy(arrays.train_images[ldam]))
    assert bundle.train.store.images.dtype == torch.uint8

    val = balanced_val_indices(arrays.train_labels, ours, 20, 0)
    assert not set(val.tolist()) & set(ours.tolist())
    # balanced wherever spare images exist: class 0 keeps all 500 images in the LT subset
    assert np.bincount(arrays.train_labels[val], minlength=100).tolist() == [0] + [20] * 99
    assert np.array_equal(val, balanced_val_indices(arrays.train_labels, ours, 20, 0))
    assert len(bundle.val) == 1980 and bundle.source["val_indices_sha256"] == cifar.index_sha256(val)
    assert torch.equal(bundle.val.store.images, torch.from_numpy(arrays.train_images[val]))
    assert len(bundle.test) == 10000 and bundle.num_classes == 100
    assert bundle.mean == cifar.CIFAR100_MEAN and bundle.image_size == 32
    assert bundle.source["md5"] == arrays.source["md5"] and bundle.source["lt_seed"] == 0


# --------------------------------------------------------------------------- small archives: readers


def test_cifar10_small_archive_and_folder(tmp_path):
    members = small_members("cifar10")
    write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.warns(ChecksumWarning, match="cifar-10-python.tar.gz"):
        arrays = load_cifar("cifar10", tmp_path)
    first = pickle.loads(members["cifar-10-batches-py/data_batch_1"], encoding="bytes")
    assert arrays.train_images.shape == (100, 3, 32, 32) and arrays.test_images.shape == (20, 3, 32, 32)
    assert np.array_equal(arrays.train_images[0].reshape(-1), first[b"data"][0])
    assert np.bincount(arrays.train_labels).tolist() == [10] * 10
    assert arrays.class_names == [f"class{c}" for c in range(10)]
    assert arrays.source["archive"] == "cifar-10-python.tar.gz"  # its name: the record must not carry this machine's path

    folder = tmp_path / "extracted"
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an extracted folder has no archive md5 to warn about
        again = load_cifar("cifar10", folder)
    assert np.array_equal(again.train_images, arrays.train_images)
    assert np.array_equal(again.test_labels, arrays.test_labels)


def test_cifar100_small_archive_str_keys(tmp_path):
    members = small_members("cifar100", per_class=3, test_per_class=1)
    # torchvision-era files may hold str keys: both forms are accepted
    d = pickle.loads(members["cifar-100-python/train"], encoding="bytes")
    members["cifar-100-python/train"] = _pickle({k.decode(): v for k, v in d.items()})
    arrays = load_quiet("cifar100", write_tar(tmp_path / "cifar-100-python.tar.gz", members).parent)
    assert arrays.train_images.shape == (300, 3, 32, 32) and len(arrays.test_labels) == 100
    assert arrays.class_names[5] == "class5"


@pytest.mark.filterwarnings("ignore::longtail.data.cifar.ChecksumWarning")
def test_build_data_small_cifar10_lt(tmp_path):
    small_archive(tmp_path, "cifar10", per_class=20)
    cfg = DataConfig(dataset="cifar10-lt", imbalance=10, val_per_class=3, download=False)
    bundle = build.build_data(cfg, tmp_path)
    assert bundle.train_counts.tolist() == lt_counts(10, 20, 10)
    assert np.bincount(bundle.val.labels, minlength=10).tolist() == [0] + [3] * 9  # class 0 keeps all 20
    images, labels = bundle.train.load([0, 1])
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert bundle.mean == cifar.CIFAR10_MEAN and bundle.std == cifar.CIFAR10_STD

    balanced = build.build_data(DataConfig(dataset="cifar10-lt", imbalance=1, download=False), tmp_path)
    assert len(balanced.train) == 200 and balanced.val is None  # IF=1 leaves no spare image

    full = build.build_data(DataConfig(dataset="cifar10", val_per_class=5, download=False), tmp_path)
    assert full.train_counts.tolist() == [15] * 10 and len(full.val) == 50 and len(full.test) == 20


def test_build_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"data.dataset: unknown dataset 'cifar1000'; choose from cifar10-lt"):
        build.build_data(DataConfig(dataset="cifar1000"), tmp_path)
    with pytest.raises(ConfigError, match="data.val_per_class"):
        build.dataset_stats(DataConfig(val_per_class=-1))


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LONGTAIL_DATA", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert build.resolve_data_root(str(tmp_path / "a"), str(tmp_path / "b")) == tmp_path / "a"
    assert build.resolve_data_root(None, str(tmp_path / "b")) == tmp_path / "b"
    monkeypatch.setenv("LONGTAIL_DATA", str(tmp_path / "a"))
    assert build.resolve_data_root(None, None) == tmp_path / "a"
    missing = tmp_path / "missing"
    with pytest.raises(DataError, match=rf"^data root {missing} does not exist \(set --data-root or \$LONGTAIL_DATA\)$"):
        build.resolve_data_root(str(missing), None)
    monkeypatch.delenv("LONGTAIL_DATA")
    cache = build.resolve_data_root(None, None)
    assert cache == tmp_path / "xdg" / "longtail" and cache.is_dir()


# --------------------------------------------------------------------------- downloads


class FakeOpener:
    def __init__(self, payload: bytes):
        self.payload, self.urls = payload, []

    def __call__(self, url):
        self.urls.append(url)
        return io.BytesIO(self.payload)


def test_download_missing_archive_calls_fetcher(tmp_path, monkeypatch):
    payload = (write_tar(tmp_path / "src.tar.gz", small_members("cifar10"))).read_bytes()
    fetch = FakeOpener(payload)
    monkeypatch.setattr(download, "urlopen", fetch)
    root = tmp_path / "root"
    root.mkdir()
    spec = cifar.SPECS["cifar10"]
    dest = root / "cifar-10-python.tar.gz"
    # the payload is not the official archive: the md5 check refuses it and leaves nothing behind
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", root, download=True)
    assert fetch.urls == [spec.url]
    assert spec.url in str(err.value) and spec.md5 in str(err.value) and str(dest) in str(err.value)
    assert "\n" not in str(err.value)
    assert not dest.exists() and not (root / "cifar-10-python.tar.gz.part").exists()
    # with the payload's md5 as the official one, the download completes and loads without a warning
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, md5=hashlib.md5(payload).hexdigest()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays = load_cifar("cifar10", root, download=True)
    assert dest.read_bytes() == payload and len(arrays.train_labels) == 100
    assert fetch.urls == [spec.url, spec.url]


def test_missing_archive_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar("cifar100", tmp_path, download=False)
    msg = str(err.value)
    assert "cifar-100-python.tar.gz" in msg and str(tmp_path) in msg and cifar.SPECS["cifar100"].url in msg


def test_download_url_file_scheme(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    md5 = download.md5sum(src)
    assert md5 == hashlib.md5(src.read_bytes()).hexdigest()
    dest = download.download_url(src.as_uri(), tmp_path / "out" / "dest.bin", md5)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(DataError, match="expected 0123") as err:
        download.download_url(src.as_uri(), tmp_path / "bad.bin", "0123")
    assert src.as_uri() in str(err.value) and str(tmp_path / "bad.bin") in str(err.value)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()
    with pytest.raises(DataError, match="could not download file:///nonexistent"):
        download.download_url("file:///nonexistent/x.tar.gz", tmp_path / "x.tar.gz", md5)
    assert not (tmp_path / "x.tar.gz.part").exists()


# --------------------------------------------------------------------------- corrupt archives


def _expect_data_error(root: Path, *fragments: str):
    with pytest.raises(DataError) as err:
        load_quiet("cifar10", root)
    msg = str(err.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_corrupt_archives(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(os.urandom(5000))
    _expect_data_error(tmp_path, str(archive))

    good = write_tar(tmp_path / "good.tar.gz", small_members("cifar10", per_class=50)).read_bytes()
    archive.write_bytes(good[: len(good) // 2])
    _expect_data_error(tmp_path, str(archive))

    raw_tar = gzip.decompress(good)
    archive.write_bytes(gzip.compress(raw_tar[: len(raw_tar) - 20000]))  # valid gzip, truncated tar
    _expect_data_error(tmp_path, str(archive))

    members = small_members("cifar10")
    del members["cifar-10-batches-py/test_batch"]
    write_tar(archive, members)
    _expect_data_error(tmp_path, str(archive), "cifar-10-batches-py/test_batch", "missing")

    members = small_members("cifar10")
    members["cifar-10-batches-py/data_batch_3"] = _pickle({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})
    write_tar(archive, members)
    _expect_data_error(tmp_path, str(archive), "data_batch_3", "(4, 100)")

    members = small_members("cifar10")
    members["cifar-10-batches-py/data_batch_2"] = b"not a pickle"
    write_tar(archive, members)
    _expect_data_error(tmp_path, str(archive), "data_batch_2")

    members = small_members("cifar10")
    members["cifar-10-batches-py/batches.meta"] = _pickle({b"label_names": [b"x"] * 3})
    write_tar(archive, members)
    _expect_data_error(tmp_path, str(archive), "batches.meta", "10 class names")


class _Exploit:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless stand-in for os.system


def test_malicious_pickle_is_refused(tmp_path):
    members = small_members("cifar10")
    members["cifar-10-batches-py/test_batch"] = _pickle({b"data": _Exploit(), b"labels": []})
    write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    msg = _expect_data_error(tmp_path, "test_batch", "forbidden global")
    assert "getcwd" in msg
