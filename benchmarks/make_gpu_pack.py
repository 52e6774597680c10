"""The CIFAR-100-LT data pack the GPU check carries: the official python-layout folder with every training
image that IF 100 (and its validation split) does not use set to zero, so that it compresses to a size that
fits one device call beside the tracked tree (64 MiB in all). The long-tailed subset and the validation
split depend on the labels and their seeds only, so training on the pack picks the same images, pixel for
pixel, as training on the archive.

    python benchmarks/make_gpu_pack.py --data-root ../shared/data --out benchmarks/data/cifar100-lt-if100-pack.tar.xz
"""
from __future__ import annotations

import argparse
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--imbalance", type=float, default=100.0)
    args = ap.parse_args()
    from longtail.config import DataConfig
    from longtail.data.cifar import balanced_val_indices, load_cifar, lt_counts, lt_indices

    cfg = DataConfig(dataset="cifar100-lt", imbalance=args.imbalance)
    arr = load_cifar("cifar100", args.data_root)
    counts = lt_counts(100, 500, args.imbalance)
    train_idx = lt_indices(arr.train_labels, counts, cfg.lt_seed)
    val_idx = balanced_val_indices(arr.train_labels, train_idx, cfg.val_per_class, cfg.val_seed, 100)
    keep = np.zeros(len(arr.train_labels), bool)
    keep[train_idx] = keep[val_idx] = True
    images = arr.train_images.copy()
    images[~keep] = 0
    def batch(imgs, labels):  # the official layout: (N, 3072) uint8 rows, channel-major
        return pickle.dumps({b"data": imgs.reshape(len(imgs), -1), b"fine_labels": [int(v) for v in labels],
                             b"coarse_labels": [0] * len(labels)}, protocol=2)
    members = {"cifar-100-python/train": batch(images, arr.train_labels),
               "cifar-100-python/test": batch(arr.test_images, arr.test_labels),
               "cifar-100-python/meta": pickle.dumps({b"fine_label_names": [n.encode() for n in arr.class_names]}, protocol=2)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:xz", preset=9) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    print(json.dumps({"pack": str(out), "bytes": out.stat().st_size, "train_images_kept": int(keep.sum()),
                      "imbalance": args.imbalance, "test_images": len(arr.test_labels)}))


if __name__ == "__main__":
    main()
