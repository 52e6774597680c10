"""Datasets: CIFAR-LT, split-file datasets (ImageNet-LT, Places-LT, iNaturalist), image folders."""
from .build import DATASETS, build_data, cifar_bundle, dataset_stats, resolve_data_root
from .cifar import (
    ChecksumWarning,
    CifarArrays,
    balanced_val_indices,
    cifar_lt_stats,
    load_cifar,
    lt_counts,
    lt_indices,
)
from .download import download_url, md5sum
from .folder import load_folder_dataset
from .groups import group_accuracy, group_sizes, shot_groups
from .images import DataBundle, ImageSet, ImageStore, TensorStore
from .splitfile import FileStore, load_split_dataset, read_split

__all__ = [
    "DATASETS",
    "ChecksumWarning",
    "CifarArrays",
    "DataBundle",
    "FileStore",
    "ImageSet",
    "ImageStore",
    "TensorStore",
    "balanced_val_indices",
    "build_data",
    "cifar_bundle",
    "cifar_lt_stats",
    "dataset_stats",
    "download_url",
    "group_accuracy",
    "group_sizes",
    "load_cifar",
    "load_folder_dataset",
    "load_split_dataset",
    "lt_counts",
    "lt_indices",
    "md5sum",
    "read_split",
    "resolve_data_root",
    "shot_groups",
]
