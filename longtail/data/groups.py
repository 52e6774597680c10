"""Many / medium / few-shot class groups by training count (official SSD thresholds by default).

many: ``n_c > many``; medium: ``few <= n_c <= many``; few: ``n_c < few``.
"""
from __future__ import annotations

import numpy as np

GROUPS = ("many", "medium", "few")


def shot_groups(counts, many: int = 100, few: int = 20) -> dict[str, np.ndarray]:
    """Class indices of each group."""
    counts = np.asarray(counts)
    return {
        "many": np.flatnonzero(counts > many),
        "medium": np.flatnonzero((counts >= few) & (counts <= many)),
        "few": np.flatnonzero(counts < few),
    }


def group_sizes(counts, many: int = 100, few: int = 20) -> dict[str, int]:
    return {g: len(idx) for g, idx in shot_groups(counts, many, few).items()}


def group_accuracy(per_class_acc, groups: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Mean per-class accuracy of each group; ``None`` for a group with no classes, never 0.

    Classes whose accuracy is NaN (no test images) are left out of the mean.
    """
    acc = np.asarray(per_class_acc, dtype=np.float64)
    out = {}
    for g, idx in groups.items():
        vals = acc[np.asarray(idx, dtype=np.int64)]
        vals = vals[~np.isnan(vals)]
        out[g] = float(vals.mean()) if vals.size else None
    return out
