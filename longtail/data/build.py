"""From a :class:`~longtail.config.DataConfig` to a :class:`DataBundle`, and ``data stats``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .cifar import (
    SPECS,
    CifarArrays,
    balanced_val_indices,
    cifar_lt_stats,
    index_sha256,
    load_cifar,
    lt_counts,
    lt_indices,
)
from .download import user_cache_dir
from .folder import folder_train_counts, load_folder_dataset
from .groups import group_sizes
from .images import DataBundle, ImageSet, TensorStore
from .synthetic import synthetic_bundle
from .splitfile import LAYOUTS, load_split_dataset, split_train_counts

CIFAR_LT = ("cifar10-lt", "cifar100-lt")
CIFAR_DATASETS = CIFAR_LT + ("cifar10", "cifar100")
DATASETS = CIFAR_DATASETS + tuple(LAYOUTS) + ("folder", "synthetic")


def resolve_data_root(cli_root: str | None = None, cfg_root: str | None = None) -> Path:
    """``--data-root``, else ``data.root``, else ``$LONGTAIL_DATA``, else the user cache (created)."""
    for given in (cli_root, cfg_root, os.environ.get("LONGTAIL_DATA")):
        if given:
            path = Path(given).expanduser()
            if not path.is_dir():
                raise DataError(f"data root {path} does not exist (set --data-root or $LONGTAIL_DATA)")
            return path
    path = user_cache_dir()
    path.mkdir(parents=True, exist_ok=True)  # downloads go here
    return path


def _check(cfg) -> None:
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {cfg.dataset!r}; choose from {', '.join(DATASETS)}")
    if cfg.val_per_class < 0:
        raise ConfigError(f"data.val_per_class must be >= 0, got {cfg.val_per_class}")


def _folder(cfg, root: Path) -> Path:
    """The ``folder`` dataset's images: ``data.image_root`` (relative to the data root) or the root."""
    if not cfg.image_root:
        return Path(root)
    folder = Path(cfg.image_root).expanduser()
    return folder if folder.is_absolute() else Path(root) / folder


def build_data(cfg, root) -> DataBundle:
    """Load the dataset that ``cfg.dataset`` names from ``root``."""
    _check(cfg)
    root = Path(root)
    if cfg.dataset in CIFAR_DATASETS:
        return cifar_bundle(cfg, load_cifar(cfg.dataset.removesuffix("-lt"), root, cfg.download))
    if cfg.dataset == "folder":
        return load_folder_dataset(_folder(cfg, root), cfg)
    if cfg.dataset == "synthetic":
        return _synthetic(cfg)
    return load_split_dataset(cfg.dataset, root, cfg)


def _synthetic(cfg) -> DataBundle:
    """Ten learnable classes of noise, CIFAR-LT profile: smoke tests and benchmarks without files."""
    return synthetic_bundle(num_classes=10, max_per_class=100, imbalance=cfg.imbalance, size=cfg.image_size or 16,
                            val_per_class=cfg.val_per_class and 5, seed=cfg.lt_seed)


def cifar_bundle(cfg, arrays: CifarArrays) -> DataBundle:
    """The splits of a CIFAR dataset from its loaded arrays.

    ``*-lt``: the LDAM-DRW subset for train, ``val_per_class`` per class drawn from the
    images it leaves out for val. Full ``cifar10``/``cifar100``: ``val_per_class`` per
    class held out of train. Test is always the official test set. A validation
    split with no images (CIFAR-10-LT at IF=1) is ``None``.
    """
    _check(cfg)
    spec = SPECS[cfg.dataset.removesuffix("-lt")]
    labels, C = arrays.train_labels, spec.num_classes
    source = {**arrays.source, "dataset": cfg.dataset, "val_per_class": cfg.val_per_class, "val_seed": cfg.val_seed}
    if cfg.dataset in CIFAR_LT:
        max_per_class = len(labels) // C
        counts = lt_counts(C, max_per_class, cfg.imbalance, cfg.profile)
        train_idx = lt_indices(labels, counts, cfg.lt_seed)
        val_idx = balanced_val_indices(labels, train_idx, cfg.val_per_class, cfg.val_seed, C)
        rule = (
            f"int({max_per_class} * (1/{cfg.imbalance:g})**(i/{C - 1}))"
            if cfg.profile == "exp"
            else f"{max_per_class} for i < {C // 2}, else int({max_per_class} * (1/{cfg.imbalance:g}))"
        )
        source.update(imbalance=cfg.imbalance, profile=cfg.profile, counts_rule=rule, lt_seed=cfg.lt_seed)
    else:
        val_idx = balanced_val_indices(labels, [], cfg.val_per_class, cfg.val_seed, C)
        train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    source.update(train_indices_sha256=index_sha256(train_idx), val_indices_sha256=index_sha256(val_idx))

    def image_set(images, labels, idx, name):
        return ImageSet(TensorStore(torch.from_numpy(np.ascontiguousarray(images[idx]))), labels[idx], name)

    all_test = np.arange(len(arrays.test_labels))
    return DataBundle(
        name=cfg.dataset,
        num_classes=C,
        class_names=list(arrays.class_names),
        train=image_set(arrays.train_images, labels, train_idx, "train"),
        val=image_set(arrays.train_images, labels, val_idx, "val") if len(val_idx) else None,
        test=image_set(arrays.test_images, arrays.test_labels, all_test, "test"),
        mean=spec.mean,
        std=spec.std,
        image_size=32,
        source=source,
    )


def dataset_stats(cfg, root=None) -> dict:
    """Training counts and shot groups; CIFAR needs no archive, other datasets read only the
    train list (or scan the folder). ``imbalance`` is the configured IF for ``*-lt``,
    otherwise the measured ``max / min`` count."""
    _check(cfg)
    names = None
    if cfg.dataset == "synthetic":
        counts = _synthetic(cfg).source["counts"]
    elif cfg.dataset in CIFAR_DATASETS:
        spec = SPECS[cfg.dataset.removesuffix("-lt")]
        if cfg.dataset in CIFAR_LT:
            counts = cifar_lt_stats(cfg.dataset, cfg.imbalance, cfg.profile)
        else:
            counts = [spec.per_class - min(cfg.val_per_class, spec.per_class)] * spec.num_classes
    else:
        root = Path(root) if root is not None else resolve_data_root(None, cfg.root)
        if cfg.dataset == "folder":
            counts = folder_train_counts(_folder(cfg, root), cfg)
            if not (cfg.train_split or cfg.val_split or cfg.test_split):
                from .folder import scan_folder

                names = scan_folder(_folder(cfg, root))[0]
        else:
            counts = split_train_counts(cfg.dataset, root, cfg)
    counts = [int(c) for c in counts]
    return {
        "dataset": cfg.dataset,
        "imbalance": float(cfg.imbalance) if cfg.dataset in CIFAR_LT else max(counts) / max(min(counts), 1),
        "num_classes": len(counts),
        "num_train": sum(counts),
        "counts": counts,
        "class_names": names or [str(c) for c in range(len(counts))],
        "groups": group_sizes(counts, cfg.many_threshold, cfg.few_threshold),
        "thresholds": {"many": cfg.many_threshold, "few": cfg.few_threshold},
    }
