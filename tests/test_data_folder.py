"""ImageFolder-LT: scanning, the deterministic train/val/test rule, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.config import DataConfig
from longtail.data import build
from longtail.data.folder import load_folder_dataset, scan_folder, split_folder
from longtail.errors import DataError


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    root.mkdir(parents=True)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            ext = (".png", ".PNG", ".Jpg", ".jpeg", ".bmp", ".webp")[i % 6]
            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[ext.lower()]
            Image.new("RGB", (6, 4), (c * 20, i, 0)).save(root / name / f"img{i:03d}{ext}", format=fmt)
    return root


def synthetic(counts):
    classes = [f"class{c}" for c in range(len(counts))]
    return classes, [[f"{name}/{i:04d}.jpg" for i in range(n)] for name, n in zip(classes, counts)]


def test_split_rule_balanced_test_and_disjoint():
    classes, files = synthetic([600, 300, 120, 50, 30, 12, 4, 1])
    splits, (cap_test, cap_val) = split_folder(classes, files, val_per_class=20, seed=0)
    # n//5 = 120 60 24 10 6 2 0 0 -> median 8; n//10 = 60 30 12 5 3 1 0 0 -> median 4
    assert (cap_test, cap_val) == (8, 4)
    count = lambda s: np.bincount(splits[s][1], minlength=8).tolist()
    assert count("test") == [8, 8, 8, 8, 6, 2, 0, 0]
    assert count("val") == [4, 4, 4, 4, 3, 1, 0, 0]
    assert count("train") == [588, 288, 108, 38, 21, 9, 4, 1]  # every class keeps >= 1
    every = [p for s in splits.values() for p in s[0]]
    assert sorted(every) == sorted(p for f in files for p in f) and len(set(every)) == len(every)


def test_split_rule_fully_balanced_when_counts_allow():
    classes, files = synthetic([2000, 1000, 700, 600])
    splits, (cap_test, cap_val) = split_folder(classes, files, val_per_class=20, seed=0)
    assert (cap_test, cap_val) == (100, 20)
    assert np.bincount(splits["test"][1]).tolist() == [100] * 4
    assert np.bincount(splits["val"][1]).tolist() == [20] * 4


def test_split_rule_deterministic_and_per_class_stable():
    classes, files = synthetic([100, 80, 60, 40, 20])
    a, _ = split_folder(classes, files, 20, seed=0)
    b, _ = split_folder(classes, files, 20, seed=0)
    c, _ = split_folder(classes, files, 20, seed=1)
    assert all(a[s][0] == b[s][0] for s in a)
    assert a["test"][0] != c["test"][0]
    # another class gaining images does not move this class's test images (the caps stay the same)
    files2 = [f + ([f"class4/extra{i}.jpg" for i in range(5)] if k == 4 else []) for k, f in enumerate(files)]
    d, _ = split_folder(classes, files2, 20, seed=0)
    test_of = lambda sp, k: [p for p, y in zip(*sp["test"]) if y == k]
    assert test_of(a, 0) == test_of(d, 0)


def test_load_folder_dataset(tmp_path):
    root = make_folder(tmp_path / "pets", {"cat": 30, "dog": 15, "emu": 7})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    classes, files = scan_folder(root)
    assert classes == ["cat", "dog", "emu"] and [len(f) for f in files] == [30, 15, 7]
    cfg = DataConfig(dataset="folder", image_root=str(root), image_size=4, val_per_class=2)
    bundle = build.build_data(cfg, tmp_path)
    assert bundle.class_names == ["cat", "dog", "emu"] and bundle.num_classes == 3
    # n//5 = 6 3 1 -> T = 3; n//10 = 3 1 0 -> V = 1
    assert np.bincount(bundle.test.labels).tolist() == [3, 3, 1]
    assert np.bincount(bundle.val.labels, minlength=3).tolist() == [1, 1, 0]
    assert bundle.train_counts.tolist() == [26, 11, 6]
    images, labels = bundle.train.load(np.arange(len(bundle.train)))
    assert len(images) == 43 and {a.shape for a in images.images} == {(4, 6, 3)} and bundle.crop_size == 4
    # colour encodes the class (red = 20 * class, up to JPEG error), so labels follow the folders
    red = np.array([int(a[0, 0, 0]) for a in images.images])
    assert np.array_equal((red + 10) // 20, labels)
    again = load_folder_dataset(root, cfg)
    assert again.source["sha256"] == bundle.source["sha256"]
    stats = build.dataset_stats(cfg, root=tmp_path)
    assert stats["counts"] == [26, 11, 6] and stats["groups"] == {"many": 0, "medium": 1, "few": 2}


def test_folder_errors(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 10, "b": 10})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=rf"^class folder {root / 'empty'} has no images"):
        scan_folder(root)
    with pytest.raises(DataError, match="has no class sub-folders"):
        scan_folder(make_folder(tmp_path / "flat", {}))
    with pytest.raises(DataError, match="image folder .*nothing does not exist"):
        load_folder_dataset(tmp_path / "nothing", DataConfig(dataset="folder"))
    tiny = make_folder(tmp_path / "tiny", {"a": 3, "b": 2, "c": 9})
    with pytest.raises(DataError, match="too few images for a test split"):
        load_folder_dataset(tiny, DataConfig(dataset="folder"))
