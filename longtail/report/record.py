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
from torch import nn

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


@torch.no_grad()
def class_weight_norms(model: nn.Module, head_name: str, adjusted: bool = True) -> torch.Tensor | None:
    """||w_c|| of a head's class weights; with ``adjusted``, as scaled by LWS or tau-norm, which is what
    the logits see (Kang et al. 2020, Fig. 2). None for models without class heads (ensembles)."""
    from ..models.adjust import LWSScale, TauNorm

    heads = getattr(model, "heads", None)
    if heads is None or head_name not in heads:
        return None
    head = heads[head_name]
    w = head.fc.weight if hasattr(head, "fc") else getattr(head, "weight", None)
    if w is None:
        return None
    norms = w.detach().float().norm(dim=1)
    adjuster = model.adjust[head_name] if adjusted and head_name in model.adjust else None
    if isinstance(adjuster, LWSScale):
        norms = norms * adjuster.scale.detach().float().abs()
    elif isinstance(adjuster, TauNorm):
        norms = norms.pow(1.0 - adjuster.tau.float())
    return norms.cpu()


def feature_classes(train_counts, k: int = FEATURE_CLASSES) -> np.ndarray:
    """``k`` classes evenly spaced over the classes sorted by training count, so many-, medium- and
    few-shot classes are all present in proportion to their share."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    picks = np.unique(np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(int))
    return np.sort(order[picks])


class _Rows:
    """Some rows of a split, with the ``len`` / ``load`` interface that evaluation reads."""

    def __init__(self, split, index: np.ndarray):
        self.split, self.index = split, index

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index):
        return self.split.load(self.index[np.asarray(index)])


def stage_record(method, model: nn.Module, ctx, test_logits: torch.Tensor) -> dict[str, np.ndarray]:
    """The arrays of ``report.npz`` for a finished stage; ``test_logits`` are the ones it was scored with."""
    test, counts = ctx.data.test, np.asarray(ctx.train_counts)
    arrays = {
        "train_counts": counts.astype(np.int64),
        "confusion": confusion_cells(test_logits, test.labels, ctx.num_classes),
        "class_names": np.array([str(n) for n in ctx.data.class_names] or [str(c) for c in range(ctx.num_classes)]),
    }
    norms = class_weight_norms(model, method.head_name)
    if norms is not None:
        arrays["weight_norms"] = norms.numpy().astype(np.float32)
    cap = ctx.recipe.runtime.report_features
    if cap > 0 and hasattr(model, "features"):
        keep = np.isin(test.labels, feature_classes(counts))
        # the first ``cap`` test images of each kept class, in dataset order
        rank = np.zeros(len(test.labels), dtype=np.int64)
        for c in np.unique(test.labels[keep]):
            members = np.flatnonzero(test.labels == c)
            rank[members] = np.arange(len(members))
        index = np.flatnonzero(keep & (rank < cap))
        if len(index):
            feats = ctx.predict_split(model, _Rows(test, index), lambda m, x: m.features(x))
            arrays["features"] = feats.numpy().astype(np.float16)
            arrays["feature_labels"] = test.labels[index].astype(np.int64)
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
