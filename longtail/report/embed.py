"""2-D views of test features: t-SNE when scikit-learn is installed, otherwise PCA."""
from __future__ import annotations

import numpy as np
import torch

PCA_LABEL = "PCA (scikit-learn not installed)"


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """``(coords (N, 2), method label)``."""
    x = np.asarray(features, dtype=np.float32)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        t = torch.from_numpy(x)
        _, _, v = torch.pca_lowrank(t, q=2, center=True)
        return ((t - t.mean(0)) @ v[:, :2]).numpy(), PCA_LABEL
    # perplexity must stay below the number of points; 30 is the usual value for a few hundred
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"


def pick_classes(available, groups: dict[str, np.ndarray], counts, n: int) -> list[int]:
    """``n`` of the ``available`` classes, shared as evenly as possible between many, medium and few,
    spread over each group's count range."""
    available = set(int(c) for c in available)
    pools = {g: sorted((int(c) for c in idx if int(c) in available), key=lambda c: -counts[c]) for g, idx in groups.items()}
    pools = {g: p for g, p in pools.items() if p}
    quota = {g: 0 for g in pools}
    left = min(n, sum(len(p) for p in pools.values()))
    while left:  # one at a time, round robin, skipping exhausted groups
        for g in pools:
            if left and quota[g] < len(pools[g]):
                quota[g] += 1
                left -= 1
    picked = []
    for g, pool in pools.items():
        if quota[g]:
            picked += [pool[i] for i in np.linspace(0, len(pool) - 1, quota[g]).round().astype(int)]
    return picked
