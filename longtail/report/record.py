"""What a finished stage keeps for ``longtail report``, so a report never re-runs the model.

``<stage>/report.npz`` holds plain arrays only (no object arrays), and is read back with
``np.load(allow_pickle=False)``, so opening it can never run code:

- ``train_counts`` (C,): training images per class;
- ``confusion`` (K, 3) int64: the non-zero cells of the test confusion matrix as
  (true class, predicted class, images). Sparse because a dense matrix for iNaturalist's
  8,142 classes would be hundreds of MB, while the non-zero cells are at most the test size;
- ``weight_norms`` (C,): the norm of each class's classifier weight, as the logits use it;
- ``features`` (N, D) float16 and ``feature_labels`` (N,): test features of a few classes
  spread over the count-sorted classes, at most ``runtime.report_features`` per class;
- ``class_names`` (C,): unicode strings.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

RECORD_NAME = "report.npz"
FEATURE_CLASSES = 24  # classes whose test features are kept; the t-SNE picks from these


def confusion_cells(logits: torch.Tensor, labels, num_classes: int) -> np.ndarray:
    """(true, predicted, count) for every non-zero cell of the confusion matrix."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    # unique over (true, predicted) codes, not a bincount over all C^2 cells, which would not fit for large C
    codes, n = torch.unique(labels * num_classes + logits.argmax(dim=1), return_counts=True)
    return torch.stack([codes // num_classes, codes % num_classes, n], dim=1).numpy().astype(np.int64)


def dense_confusion(cells: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    matrix[cells[:, 0], cells[:, 1]] = cells[:, 2]
    return matrix


def feature_classes(train_counts, k: int = FEATURE_CLASSES) -> np.ndarray:
    """``k`` classes evenly spaced over the classes sorted by training count, so many-, medium- and
    few-shot classes are all present in proportion to their share."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    picks = np.unique(np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(int))
    return np.sort(order[picks])


def feature_rows(test_labels, train_counts, cap: int) -> np.ndarray:
    """Which test images keep their features: the first ``cap`` of each class in ``feature_classes``, in dataset order."""
    labels = np.asarray(test_labels)
    if cap <= 0:
        return np.zeros(0, dtype=np.int64)
    keep = np.isin(labels, feature_classes(train_counts))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels[keep]):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return np.flatnonzero(keep & (rank < cap))


def stage_record(test_logits: torch.Tensor, test_labels, train_counts, class_names, weight_norms=None,
                 features=None, feature_labels=None) -> dict[str, np.ndarray]:
    """The arrays of ``report.npz`` for a finished stage, from arrays alone: ``test_logits`` are the ones it was
    scored with; ``weight_norms`` (C,) and the kept test ``features`` with their labels where the model has them."""
    counts = np.asarray(train_counts)
    arrays = {
        "train_counts": counts.astype(np.int64),
        "confusion": confusion_cells(test_logits, test_labels, len(counts)),
        "class_names": np.array([str(n) for n in class_names] or [str(c) for c in range(len(counts))]),
    }
    if weight_norms is not None:
        arrays["weight_norms"] = np.asarray(weight_norms, dtype=np.float32)
    if features is not None and len(features):
        arrays["features"] = np.asarray(features).astype(np.float16)
        arrays["feature_labels"] = np.asarray(feature_labels).astype(np.int64)
    return arrays


def save_record(stage_dir: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Written atomically, so a crash never leaves a half-written record beside a finished stage."""
    path = Path(stage_dir) / RECORD_NAME
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_record(stage_dir: Path) -> dict[str, np.ndarray] | None:
    path = Path(stage_dir) / RECORD_NAME
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
