"""Split-file datasets: the real benchmark lists, parsing errors, FileStore decoding and its cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.config import DataConfig
from longtail.data import build, filestore, splitfile
from longtail.data.splitfile import FileStore, load_split_dataset, read_split
from longtail.errors import ConfigError, DataError


def real_split(shared_data: Path, rel: str) -> Path:
    path = shared_data / "splits" / rel
    if not path.is_file():
        pytest.skip(f"split list {path} not found")
    return path


# --------------------------------------------------------------------------- the real lists


@pytest.mark.parametrize(
    "rel, lines, classes, lo, hi",
    [
        ("ImageNet_LT/ImageNet_LT_test.txt", 50_000, 1000, 50, 50),
        ("Places_LT/Places_LT_train.txt", 62_500, 365, 5, 4980),
        ("iNaturalist18/iNaturalist18_val.txt", 24_426, 8142, 3, 3),
    ],
)
def test_real_split_lists(shared_data, rel, lines, classes, lo, hi):
    paths, labels = read_split(real_split(shared_data, rel))
    assert len(paths) == len(labels) == lines and labels.dtype == np.int64
    counts = np.bincount(labels)
    assert len(counts) == classes and counts.min() == lo and counts.max() == hi


def test_places_lt_stats_from_the_real_train_list(shared_data):
    real_split(shared_data, "Places_LT/Places_LT_train.txt")
    stats = build.dataset_stats(DataConfig(dataset="places-lt"), root=shared_data)  # found under splits/
    assert stats["num_train"] == 62_500 and stats["num_classes"] == 365
    assert stats["imbalance"] == 4980 / 5 and sum(stats["groups"].values()) == 365


# --------------------------------------------------------------------------- parsing errors


def test_read_split_skips_blank_lines(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("a/x.jpg 0\n\n  \nb/y.jpg 12\n")
    paths, labels = read_split(f)
    assert paths == ["a/x.jpg", "b/y.jpg"] and labels.tolist() == [0, 12]


@pytest.mark.parametrize("bad", ["a/x.jpg", "a/x.jpg 1 2", "a/x.jpg one", "a/x.jpg -1", "a/x.jpg 1.5"])
def test_read_split_bad_line_names_file_and_line(tmp_path, bad):
    f = tmp_path / "s.txt"
    f.write_text(f"ok/a.jpg 0\n\n{bad}\n")
    with pytest.raises(DataError) as err:
        read_split(f)
    assert str(err.value) == f"{f}:3: expected '<relative path> <label>', got {bad!r}"


def test_read_split_duplicates_and_missing_file(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("a/x.jpg 0\nb/y.jpg 1\na/x.jpg 1\n")
    with pytest.raises(DataError, match=rf"^{f}:3: duplicate image 'a/x.jpg' \(also on line 1\)$"):
        read_split(f)
    with pytest.raises(DataError, match="split file .*nope.txt does not exist"):
        read_split(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- decoding


def write_image(path: Path, array: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def test_filestore_decodes_real_list_paths(shared_data, tmp_path):
    paths, _ = read_split(real_split(shared_data, "ImageNet_LT/ImageNet_LT_test.txt"))
    places, _ = read_split(real_split(shared_data, "Places_LT/Places_LT_train.txt"))
    rel = paths[:2] + places[:2]
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    halves = np.zeros((32, 64, 3), np.uint8)  # left half black, right half white
    halves[:, 32:] = 255
    gray = np.full((50, 40), 128, np.uint8)  # a grayscale JPEG must come out RGB
    write_image(tmp_path / rel[0], red, "PNG")  # PNG bytes under a .JPEG name: PIL sniffs the content
    write_image(tmp_path / rel[1], halves, "PNG")
    write_image(tmp_path / rel[2], gray, "JPEG")
    write_image(tmp_path / rel[3], np.random.RandomState(0).randint(0, 256, (300, 200, 3)).astype(np.uint8), "JPEG")

    store = FileStore(tmp_path, rel, size=16, threads=2)
    batch = store.load(np.arange(4)).images
    # shorter side to 16, aspect kept (torchvision Resize(16) sizes), nothing cropped
    assert [a.shape for a in batch] == [(16, 24, 3), (16, 32, 3), (20, 16, 3), (24, 16, 3)] and len(store) == 4
    assert all(a.dtype == np.uint8 for a in batch)
    assert (batch[0][..., 0] == 255).all() and (batch[0][..., 1:] == 0).all()
    # 64x32 -> 32x16: black left of column 16, white right of it
    assert (batch[1][:, :15] == 0).all() and (batch[1][:, 17:] == 255).all()
    assert np.abs(batch[2].astype(int) - 128).max() <= 2 and np.array_equal(batch[2][..., 0], batch[2][..., 1])
    again = store.load([3, 0]).images
    assert np.array_equal(again[0], batch[3]) and np.array_equal(again[1], batch[0])


def test_missing_and_corrupt_images(tmp_path):
    write_image(tmp_path / "ok.png", np.zeros((8, 8, 3), np.uint8), "PNG")
    (tmp_path / "junk.jpg").write_bytes(os.urandom(500))
    good = tmp_path / "good.jpg"
    write_image(good, np.random.RandomState(1).randint(0, 256, (64, 64, 3)).astype(np.uint8), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    store = FileStore(tmp_path, ["ok.png", "gone.png", "junk.jpg", "cut.jpg"], size=8)
    assert [a.shape for a in store.load([0]).images] == [(8, 8, 3)]
    with pytest.raises(DataError, match=rf"^image {tmp_path / 'gone.png'} does not exist$"):
        store.load([0, 1])
    for i, name in ((2, "junk.jpg"), (3, "cut.jpg")):
        with pytest.raises(DataError, match=rf"^image {tmp_path / name} cannot be decoded") as err:
            store.load([i])
        assert "\n" not in str(err.value)


def test_image_cache_is_reused(tmp_path, monkeypatch):
    rel = [f"c{i}/img{i}.png" for i in range(5)]
    for i, r in enumerate(rel):
        write_image(tmp_path / "img" / r, np.full((10, 12, 3), 40 * i, np.uint8), "PNG")
    cache = tmp_path / "cache"
    store = FileStore(tmp_path / "img", rel, size=8, cache_dir=cache)
    first = store.load([0, 2, 4]).images  # the first load builds the whole cache
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert (folder / "manifest.json").is_file() and len(list(folder.glob("shard-*.bin"))) == 1

    def no_decoding(path, *args):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(filestore, "decode_image", no_decoding)
    again = FileStore(tmp_path / "img", rel, size=8, cache_dir=cache)  # a later run reads only the cache
    for a, b in zip(again.load([0, 2, 4]).images, first):
        assert a.shape == b.shape == (8, 9, 3) and np.abs(a.astype(int) - b).max() <= 2  # flat images survive JPEG q90
    assert [a.shape for a in again.load([1]).images] == [(8, 9, 3)]
    other = FileStore(tmp_path / "img", rel, size=6, cache_dir=cache)  # another size: another cache
    with pytest.raises(AssertionError, match="decoded"):
        other.load([0])


# --------------------------------------------------------------------------- datasets


def write_split(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {y}\n" for p, y in rows))
    return path


def test_imagenet_lt_layout(tmp_path):
    root = tmp_path / "data"
    rows = {
        "train": [("train/n01/a.JPEG", 0), ("train/n01/b.JPEG", 0), ("train/n02/c.JPEG", 1), ("train/n03/d.JPEG", 2)],
        "val": [("train/n01/e.JPEG", 0), ("train/n03/f.JPEG", 2)],
        "test": [("val/n01/g.JPEG", 0), ("val/n02/h.JPEG", 1), ("val/n03/i.JPEG", 2)],
    }
    for split, r in rows.items():
        write_split(root / "splits" / "ImageNet_LT" / f"ImageNet_LT_{split}.txt", r)
        for p, _ in r:
            write_image(root / "ImageNet_LT" / p, np.zeros((40, 50, 3), np.uint8), "JPEG")
    bundle = build.build_data(DataConfig(dataset="imagenet-lt"), root)
    assert bundle.num_classes == 3 and bundle.class_names == ["n01", "n02", "n03"]
    assert bundle.train_counts.tolist() == [2, 1, 1] and len(bundle.val) == 2 and len(bundle.test) == 3
    assert bundle.image_size == 256 and bundle.crop_size == 224 and bundle.mean == (0.485, 0.456, 0.406)
    images, labels = bundle.test.load([2])
    assert [a.shape for a in images.images] == [(256, 256, 3)] and labels.tolist() == [2]  # test: the centre square
    assert [a.shape for a in bundle.train.load([0])[0].images] == [(256, 320, 3)]  # train: the whole image
    assert bundle.source["image_root"] == str(root / "ImageNet_LT")

    small = build.build_data(DataConfig(dataset="imagenet-lt", image_size=24), root)
    assert [a.shape for a in small.train.load([0])[0].images] == [(24, 30, 3)] and small.input_size == 24


def test_inat_test_is_val_and_overrides(tmp_path):
    write_split(tmp_path / "lists" / "tr.txt", [("x/0/a.jpg", 0), ("x/1/b.jpg", 1)])
    write_split(tmp_path / "lists" / "va.txt", [("x/0/c.jpg", 0), ("x/1/d.jpg", 1)])
    (tmp_path / "imgs").mkdir()
    cfg = DataConfig(dataset="inat2018", train_split="lists/tr.txt", test_split="lists/va.txt", image_root="imgs")
    bundle = load_split_dataset("inat2018", tmp_path, cfg)
    assert bundle.val is None and len(bundle.test) == 2  # no validation split unless one is named
    assert bundle.source["splits"]["test"] == str(tmp_path / "lists" / "va.txt")

    with pytest.raises(DataError, match=r"iNaturalist18_train.txt not found .*set data.train_split"):
        load_split_dataset("inat2018", tmp_path, DataConfig(dataset="inat2018"))
    with pytest.raises(DataError, match="image root .*nowhere does not exist"):
        load_split_dataset("inat2018", tmp_path, DataConfig(dataset="inat2018", train_split="lists/tr.txt",
                                                            test_split="lists/va.txt", image_root="nowhere"))
    with pytest.raises(ConfigError, match="data.train_split"):
        load_split_dataset("folder", tmp_path, DataConfig(dataset="folder", test_split="lists/va.txt"))


def test_empty_training_class(tmp_path):
    train = write_split(tmp_path / "tr.txt", [("a.jpg", 0), ("b.jpg", 2)])
    write_split(tmp_path / "te.txt", [("c.jpg", 0), ("d.jpg", 1), ("e.jpg", 2)])
    cfg = DataConfig(dataset="places-lt", train_split="tr.txt", test_split="te.txt", val_split="te.txt", image_root=".")
    with pytest.raises(DataError, match=rf"^{train}: class 1 has no training images$"):
        load_split_dataset("places-lt", tmp_path, cfg)
    write_split(train, [("a.jpg", 0), ("b.jpg", 3)])
    with pytest.raises(DataError, match=r"class 1 has no training images \(and 1 more\)"):
        build.dataset_stats(cfg, root=tmp_path)
